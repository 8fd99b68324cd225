-- Every delivery attempt of a customer webhook, with its result.
CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  INTEGER NOT NULL REFERENCES webhooks (id),
    at          REAL NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration    REAL NOT NULL
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook_id, id);
