-- Messenger intake (api/intake.py) finds one conversation's messages for a watermark: those
-- the Graph API answered (by their Messenger id) and those whose send is still in flight (a
-- watermark can beat the send's answer; the receipt then names the message by Cascade's id).
-- Both are found through one index of Messenger messages by account and user, partial on the
-- channel as on SQLite (where a partial index on the provider made every statement binding
-- `provider = ?` recompile at each execution).
-- One kept for an engine to apply (a process that runs none) names its message in message_id.
ALTER TABLE orphan_receipts ADD COLUMN message_id text;
DROP INDEX messages_messenger_thread;
CREATE INDEX messages_messenger ON messages (account_id, ((recipient::jsonb ->> 'id')))
    WHERE channel = 'messenger';
