-- The declared schema: what applying every migration to an empty database must give.
CREATE TABLE accounts (
    id                TEXT PRIMARY KEY,
    api_key           TEXT NOT NULL UNIQUE,
    api_secret_sha256 TEXT NOT NULL,
    signature_secret  TEXT NOT NULL,
    status_url        TEXT,
    inbound_url       TEXT,
    created_at        REAL NOT NULL,
    -- messages from no linked channel: the sandbox (true) or rejected (see migration 0009)
    sandbox           INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE applications (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    name           TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    status_url     TEXT,
    inbound_url    TEXT,
    created_at     REAL NOT NULL,
    -- the shape of its messages' status webhooks: 'v0.1' or 'v1' (migration 0012)
    webhook_version TEXT NOT NULL DEFAULT 'v0.1'
);
CREATE INDEX applications_account ON applications (account_id, created_at);

CREATE TABLE workflows (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    application_id TEXT,
    surface        TEXT NOT NULL,
    state          TEXT NOT NULL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    finished_at    REAL,
    -- bumped by every write a transition decides from (see migration 0006)
    version        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workflows_account ON workflows (account_id, created_at);
CREATE INDEX workflows_finished ON workflows (finished_at) WHERE finished_at IS NOT NULL;

-- One row per workflow step; a plain message is a workflow of one step.
CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    workflow_id         TEXT NOT NULL REFERENCES workflows (id),
    step                INTEGER NOT NULL,
    account_id          TEXT NOT NULL,
    channel             TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    sender              TEXT NOT NULL,
    body                TEXT NOT NULL,
    client_ref          TEXT,
    expiry_time         INTEGER,
    condition_status    TEXT,
    state               TEXT NOT NULL,
    status              TEXT,
    error_code          INTEGER,
    error_reason        TEXT,
    provider            TEXT,
    provider_message_id TEXT,
    price               TEXT,
    currency            TEXT,
    started_at          REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    send_attempts       INTEGER NOT NULL DEFAULT 0,
    send_started_at     REAL,
    last_error_code     INTEGER,
    last_error_reason   TEXT,
    segments            INTEGER,
    -- a v1 message's own status URL, and its webhooks' shape (NULL: v0.1) (migration 0012)
    webhook_url         TEXT,
    webhook_version     TEXT,
    UNIQUE (workflow_id, step)
);
CREATE INDEX messages_account ON messages (account_id, created_at);
CREATE UNIQUE INDEX messages_provider_ref ON messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
-- one Messenger conversation's messages, for a watermark (migration 0013)
CREATE INDEX messages_messenger ON messages (account_id, json_extract(recipient, '$.id'))
    WHERE channel = 'messenger';

-- The timeline: statuses with their time, source and reason, step starts, send retries (with
-- their next attempt), failovers, outcome.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    message_id  TEXT,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT,
    code        INTEGER,
    reason      TEXT,
    source      TEXT,
    next_at     REAL
);
CREATE INDEX events_workflow ON events (workflow_id, id);

-- Every timer, retry and pending send is a row here; nothing lives only in memory.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    ref          TEXT NOT NULL,
    run_at       REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    locked_by    TEXT,
    locked_until REAL,
    created_at   REAL NOT NULL
);
CREATE INDEX jobs_due ON jobs (run_at);
CREATE INDEX jobs_kind_due ON jobs (kind, run_at);
CREATE INDEX jobs_ref ON jobs (ref, kind);

CREATE TABLE idempotency_keys (
    account_id     TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    status_code    INTEGER NOT NULL,
    response       TEXT NOT NULL,
    created_at     REAL NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- A receipt whose provider id matches no message yet (an SMPP DLR can beat its submit_sm_resp).
CREATE TABLE orphan_receipts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    at                  REAL NOT NULL,
    code                INTEGER,
    reason              TEXT,
    received_at         REAL NOT NULL,
    -- Cascade's id of the message, when the provider's was not known yet (migration 0013)
    message_id          TEXT
);
CREATE INDEX orphan_receipts_ref ON orphan_receipts (provider, provider_message_id);
CREATE INDEX orphan_receipts_received ON orphan_receipts (received_at);

-- Every message the sandbox provider received, and the receipts it still owes.
CREATE TABLE sandbox_messages (
    message_id          TEXT PRIMARY KEY,
    provider_message_id TEXT NOT NULL UNIQUE,
    channel             TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    text                TEXT,
    attempts            INTEGER NOT NULL,
    received_at         REAL,
    receipts_due        TEXT NOT NULL DEFAULT '[]'
);

-- Customer webhooks: the exact body to deliver, where, and how delivery went.
CREATE TABLE webhooks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id       TEXT NOT NULL,
    application_id   TEXT,
    workflow_id      TEXT,
    message_id       TEXT,
    kind             TEXT NOT NULL,
    url              TEXT,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    first_attempt_at REAL,
    last_attempt_at  REAL,
    next_attempt_at  REAL,
    last_status      INTEGER,
    last_error       TEXT,
    delivered_at     REAL,
    -- an inbound message's id at its platform: its webhook is queued once (migration 0010)
    inbound_ref      TEXT,
    -- an inbound message's uuid, channel and the address it was sent to (migration 0014)
    inbound_uuid     TEXT,
    inbound_channel  TEXT,
    inbound_to       TEXT
);
CREATE INDEX webhooks_workflow ON webhooks (workflow_id, id);
CREATE INDEX webhooks_state ON webhooks (state, id);
CREATE INDEX webhooks_unattached ON webhooks (created_at) WHERE workflow_id IS NULL;
CREATE UNIQUE INDEX webhooks_inbound_ref ON webhooks (inbound_ref) WHERE inbound_ref IS NOT NULL;
CREATE UNIQUE INDEX webhooks_inbound_uuid ON webhooks (inbound_uuid) WHERE inbound_uuid IS NOT NULL;

CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  INTEGER NOT NULL REFERENCES webhooks (id),
    at          REAL NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration    REAL NOT NULL
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook_id, id);

CREATE TABLE message_parts (
    provider    TEXT NOT NULL,
    part_id     TEXT NOT NULL,
    message_id  TEXT NOT NULL REFERENCES messages (id),
    seq         INTEGER NOT NULL,
    status      TEXT,
    code        INTEGER,
    reason      TEXT,
    PRIMARY KEY (provider, part_id)
);
CREATE INDEX message_parts_message ON message_parts (message_id, seq);

-- A provider account (page, number, bot) linked to an account; credentials sealed.
CREATE TABLE channel_links (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    channel     TEXT NOT NULL,
    address     TEXT NOT NULL,
    credentials BLOB NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (channel, address)
);
CREATE INDEX channel_links_account ON channel_links (account_id, created_at);

-- A signed-in dashboard browser, by its cookie's SHA-256; failed sign-ins per account.
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
CREATE TABLE smpp_binds (
    name       TEXT PRIMARY KEY,
    bound      INTEGER NOT NULL,
    last_error TEXT,
    changed_at REAL NOT NULL
);
CREATE TABLE smpp_nodes (
    connection TEXT NOT NULL,
    node       TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (connection, node)
);
