-- Intake of the platforms' signed callbacks (api/intake.py).
-- An inbound message's webhook carries the platform's id of the message, once: a callback the
-- platform repeats (it does until it hears 200) queues no second webhook. Retention deletes
-- the record with its webhook.
ALTER TABLE webhooks ADD COLUMN inbound_ref text;
CREATE UNIQUE INDEX webhooks_inbound_ref ON webhooks (inbound_ref) WHERE inbound_ref IS NOT NULL;
-- A Messenger watermark covers every earlier message of one conversation: they are found by
-- the account and the user's PSID among Messenger messages only.
CREATE INDEX messages_messenger_thread ON messages (account_id, ((recipient::jsonb ->> 'id')))
    WHERE provider = 'messenger';
