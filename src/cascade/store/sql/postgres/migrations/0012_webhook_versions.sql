-- Messages v1 (api/messages_v1.py). An application's webhook_version picks the shape of the
-- status webhooks of the messages it sends: 'v0.1' (every application so far) or 'v1'.
-- A message keeps the shape it was accepted with (NULL: v0.1, as every message so far), and
-- the URL its status webhooks go to when the request named one (NULL: its application's,
-- else its account's status URL).
ALTER TABLE applications ADD COLUMN webhook_version text NOT NULL DEFAULT 'v0.1';
ALTER TABLE messages ADD COLUMN webhook_url text;
ALTER TABLE messages ADD COLUMN webhook_version text;
