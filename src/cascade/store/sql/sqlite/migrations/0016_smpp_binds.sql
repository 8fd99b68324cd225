-- The state of each SMPP connection as the engine that holds it last saw it: written by the
-- engine process only when a bind's state changes, read by the dashboard of API processes,
-- which hold no SMPP connection of their own.
CREATE TABLE smpp_binds (
    name       TEXT PRIMARY KEY,
    bound      INTEGER NOT NULL,
    last_error TEXT,
    changed_at REAL NOT NULL
);
