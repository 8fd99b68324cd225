-- The dashboard (/dashboard): a signed-in browser's session, found by the SHA-256 of its
-- cookie (the cookie itself is stored nowhere), with the token its forms must carry; and the
-- failed sign-ins of each account, counted here so that every node sees the same count.
CREATE TABLE dashboard_sessions (
    token_sha256 TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf_token   TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
CREATE TABLE dashboard_sign_in_failures (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    failures   INTEGER NOT NULL,
    last_at    REAL NOT NULL
);
