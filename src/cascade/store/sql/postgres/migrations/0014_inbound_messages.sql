-- An inbound message is named later by the message_uuid its webhook carried (PATCH
-- /v1/messages/{uuid} marks a WhatsApp one read): the uuid, the channel and the address it was
-- sent to (the linked number, page or bot whose link acts on it; an SMS long number) are kept
-- with its webhook, and go when retention deletes the webhook.
ALTER TABLE webhooks ADD COLUMN inbound_uuid text;
ALTER TABLE webhooks ADD COLUMN inbound_channel text;
ALTER TABLE webhooks ADD COLUMN inbound_to text;
CREATE UNIQUE INDEX webhooks_inbound_uuid ON webhooks (inbound_uuid) WHERE inbound_uuid IS NOT NULL;
