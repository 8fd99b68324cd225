-- The retention task finds what it may purge without reading every row: finished workflows
-- by when they finished, idempotency keys and orphan receipts by age, and the webhooks of no
-- workflow (inbound messages) by age.
CREATE INDEX workflows_finished ON workflows (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX orphan_receipts_received ON orphan_receipts (received_at);
CREATE INDEX webhooks_unattached ON webhooks (created_at) WHERE workflow_id IS NULL;
