-- The dashboard (/dashboard): a signed-in browser's session, found by the SHA-256 of its
-- cookie (the cookie itself is stored nowhere), with the token its forms must carry; and the
-- failed sign-ins of each account, counted here so that every node sees the same count.
CREATE TABLE dashboard_sessions (
    token_sha256 text PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   double precision NOT NULL,
    expires_at   double precision NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
CREATE TABLE dashboard_sign_in_failures (
    account_id text PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    failures   integer NOT NULL,
    last_at    double precision NOT NULL
);
