-- Long SMS go out as several parts, each with its own provider id and receipt.
ALTER TABLE messages ADD COLUMN segments integer;

CREATE TABLE message_parts (
    provider   text NOT NULL,
    part_id    text NOT NULL,
    message_id text NOT NULL REFERENCES messages (id),
    seq        integer NOT NULL,
    status     text,
    code       integer,
    reason     text,
    PRIMARY KEY (provider, part_id)
);
CREATE INDEX message_parts_message ON message_parts (message_id, seq);
