-- Linked channels: a Messenger page, a WhatsApp number or a Viber bot linked to an account,
-- with its provider credentials sealed (cascade.sealing). An address is linked once across
-- the installation, so a platform's callback names exactly one account.
CREATE TABLE channel_links (
    id          text PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    channel     text NOT NULL,
    address     text NOT NULL,
    credentials bytea NOT NULL,
    created_at  double precision NOT NULL,
    UNIQUE (channel, address)
);
CREATE INDEX channel_links_account ON channel_links (account_id, created_at);
-- A sandbox account's messages from no linked channel go to the sandbox; a live account's are
-- rejected. Every account that exists already keeps today's behaviour: the sandbox.
ALTER TABLE accounts ADD COLUMN sandbox boolean NOT NULL DEFAULT true;
