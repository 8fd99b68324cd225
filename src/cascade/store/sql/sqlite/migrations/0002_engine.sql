-- The engine: send attempts, receipts that arrive before their submit, the sandbox's journal
-- and the customer webhooks each status change produces.
ALTER TABLE messages ADD COLUMN send_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN send_started_at REAL;
ALTER TABLE messages ADD COLUMN last_error_code INTEGER;
ALTER TABLE messages ADD COLUMN last_error_reason TEXT;

-- A receipt whose provider id matches no message yet (an SMPP DLR can beat its submit_sm_resp).
CREATE TABLE orphan_receipts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    at                  REAL NOT NULL,
    code                INTEGER,
    reason              TEXT,
    received_at         REAL NOT NULL
);
CREATE INDEX orphan_receipts_ref ON orphan_receipts (provider, provider_message_id);

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
    delivered_at     REAL
);
CREATE INDEX webhooks_workflow ON webhooks (workflow_id, id);
CREATE INDEX webhooks_state ON webhooks (state, id);
