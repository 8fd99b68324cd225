-- Messenger intake (api/intake.py) finds one conversation's messages for a watermark: those
-- the Graph API answered (by their Messenger id) and those whose send is still in flight (a
-- watermark can beat the send's answer; the receipt then names the message by Cascade's id).
-- Both are found through one index of Messenger messages by account and user. It is partial
-- on the channel, not on the provider as 0010's was: SQLite recompiles a statement at every
-- execution when one of its parameters is compared with a partial index's condition, and the
-- hot statements all bind `provider = ?` (a transition's read cost 67 us instead of 12).
-- One kept for an engine to apply (a process that runs none) names its message in message_id.
ALTER TABLE orphan_receipts ADD COLUMN message_id TEXT;
DROP INDEX messages_messenger_thread;
CREATE INDEX messages_messenger ON messages (account_id, json_extract(recipient, '$.id'))
    WHERE channel = 'messenger';
