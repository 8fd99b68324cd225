-- A Messenger watermark can arrive while a send it covers is still in flight (the Graph API
-- has not answered yet, so Cascade does not know the message's id there): such a message is
-- found by its conversation among Messenger messages without a provider id, and the receipt
-- names it by Cascade's own id. One kept for an engine to apply (a process that runs none)
-- says so in message_id.
ALTER TABLE orphan_receipts ADD COLUMN message_id TEXT;
CREATE INDEX messages_messenger_unsent ON messages (account_id, json_extract(recipient, '$.id'))
    WHERE channel = 'messenger' AND provider_message_id IS NULL;
