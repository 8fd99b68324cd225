-- Long SMS go out as several parts, each with its own provider id and receipt.
ALTER TABLE messages ADD COLUMN segments INTEGER;

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
