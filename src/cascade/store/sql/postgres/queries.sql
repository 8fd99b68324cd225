-- Every statement Cascade runs on PostgreSQL, by name (store/queries.py loads them; the SQLite
-- file defines the same names). Parameters are :name; a list parameter is an array. A block of
-- several statements runs them in order with the same parameters, the last one's rows being
-- its result. Ids are ordered byte by byte (COLLATE "C"), as SQLite orders them, whatever the
-- database's collation.

-- name: ping
SELECT 1

-- ---- tenancy -------------------------------------------------------------------------------

-- name: insert_account
INSERT INTO accounts (id, api_key, api_secret_sha256, signature_secret, status_url,
                      inbound_url, created_at, sandbox)
VALUES (:id, :api_key, :api_secret_sha256, :signature_secret, :status_url, :inbound_url,
        :created_at, :sandbox)

-- name: account
SELECT * FROM accounts WHERE id = :id

-- name: account_by_api_key
SELECT * FROM accounts WHERE api_key = :api_key

-- name: accounts
SELECT * FROM accounts ORDER BY created_at, id COLLATE "C"

-- name: update_account
UPDATE accounts SET
    status_url = CASE WHEN :set_status_url THEN :status_url ELSE status_url END,
    inbound_url = CASE WHEN :set_inbound_url THEN :inbound_url ELSE inbound_url END,
    signature_secret = CASE WHEN :set_signature_secret THEN :signature_secret
                       ELSE signature_secret END,
    api_secret_sha256 = CASE WHEN :set_api_secret_sha256 THEN :api_secret_sha256
                        ELSE api_secret_sha256 END,
    sandbox = CASE WHEN :set_sandbox THEN :sandbox ELSE sandbox END
WHERE id = :id
RETURNING *

-- name: insert_application
INSERT INTO applications (id, account_id, name, public_key_pem, status_url, inbound_url,
                          created_at, webhook_version)
VALUES (:id, :account_id, :name, :public_key_pem, :status_url, :inbound_url, :created_at,
        :webhook_version)

-- name: update_application
UPDATE applications SET
    status_url = CASE WHEN :set_status_url THEN :status_url ELSE status_url END,
    inbound_url = CASE WHEN :set_inbound_url THEN :inbound_url ELSE inbound_url END,
    public_key_pem = CASE WHEN :set_public_key_pem THEN :public_key_pem
                     ELSE public_key_pem END,
    webhook_version = CASE WHEN :set_webhook_version THEN :webhook_version
                      ELSE webhook_version END
WHERE id = :id
RETURNING *

-- name: delete_application
DELETE FROM applications WHERE id = :id

-- name: application
SELECT * FROM applications WHERE id = :id

-- name: applications
SELECT * FROM applications WHERE account_id = :account_id ORDER BY created_at, id COLLATE "C"

-- name: insert_channel_link
INSERT INTO channel_links (id, account_id, channel, address, credentials, created_at)
VALUES (:id, :account_id, :channel, :address, :credentials, :created_at)

-- name: channel_links
SELECT * FROM channel_links ORDER BY created_at, id COLLATE "C"

-- name: channel_links_of_account
SELECT * FROM channel_links WHERE account_id = :account_id ORDER BY created_at, id COLLATE "C"

-- name: channel_link
SELECT * FROM channel_links WHERE channel = :channel AND address = :address

-- name: delete_channel_link
-- only the account's own link
DELETE FROM channel_links WHERE id = :id AND account_id = :account_id

-- ---- the accept path -----------------------------------------------------------------------

-- name: claim_idempotency_key
-- a key older than its time to live is taken again by this request
INSERT INTO idempotency_keys (account_id, key, request_sha256, status_code, response,
                              created_at)
VALUES (:account_id, :key, :request_sha256, :status_code, :response, :created_at)
ON CONFLICT (account_id, key) DO UPDATE SET
    request_sha256 = EXCLUDED.request_sha256, status_code = EXCLUDED.status_code,
    response = EXCLUDED.response, created_at = EXCLUDED.created_at
WHERE idempotency_keys.created_at <= EXCLUDED.created_at - :ttl::double precision
RETURNING account_id, key

-- name: idempotency_keys
SELECT * FROM idempotency_keys
WHERE (account_id, key) IN (SELECT * FROM unnest(:account_ids::text[], :keys::text[]))

-- name: insert_workflow
INSERT INTO workflows (id, account_id, application_id, surface, state, created_at, updated_at)
VALUES (:id, :account_id, :application_id, :surface, 'running', :created_at, :created_at)

-- name: insert_message
INSERT INTO messages (id, workflow_id, step, account_id, channel, recipient, sender, body,
                      client_ref, expiry_time, condition_status, state, started_at,
                      created_at, updated_at, webhook_url, webhook_version)
VALUES (:id, :workflow_id, :step, :account_id, :channel, :recipient, :sender, :body,
        :client_ref, :expiry_time, :condition_status, :state, :started_at, :created_at,
        :created_at, :webhook_url, :webhook_version)

-- name: insert_job
INSERT INTO jobs (kind, ref, run_at, created_at) VALUES (:kind, :ref, :run_at, :created_at)

-- ---- reading back --------------------------------------------------------------------------

-- name: workflow
SELECT * FROM workflows WHERE id = :id AND account_id = :account_id

-- name: workflow_messages
SELECT * FROM messages WHERE workflow_id = :workflow_id ORDER BY step

-- name: workflow_events
SELECT * FROM events WHERE workflow_id = :workflow_id ORDER BY id

-- name: workflows
-- an account's page, newest first: (created_at, id) before the last one of the page before
SELECT * FROM workflows
WHERE account_id = :account_id
  AND created_at <= :before_at
  AND (created_at < :before_at OR id COLLATE "C" < :before_id)
  AND created_at >= :created_after AND created_at < :created_before
  AND (:state::text IS NULL OR state = :state)
ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT :limit

-- name: messages_of_workflows
SELECT * FROM messages WHERE workflow_id = ANY(:workflow_ids::text[]) ORDER BY step

-- name: message
SELECT * FROM messages WHERE id = :id AND account_id = :account_id

-- name: messages
SELECT * FROM messages
WHERE account_id = :account_id
  AND created_at <= :before_at
  AND (created_at < :before_at OR id COLLATE "C" < :before_id)
  AND created_at >= :created_after AND created_at < :created_before
  AND (:state::text IS NULL OR status = :state)
  AND (:channel::text IS NULL OR channel = :channel)
ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT :limit

-- name: jobs_of
SELECT * FROM jobs WHERE ref = :ref ORDER BY run_at, id

-- ---- the engine ----------------------------------------------------------------------------

-- name: find_message
SELECT * FROM messages WHERE id = :id

-- name: find_messages
SELECT * FROM messages WHERE id = ANY(:ids::text[])

-- name: claim_jobs
-- SKIP LOCKED: workers on other hosts claiming at the same moment take other jobs
UPDATE jobs SET locked_by = :worker_id, locked_until = :until
WHERE id IN (SELECT id FROM jobs
             WHERE run_at <= :now AND (locked_until IS NULL OR locked_until < :now)
             ORDER BY run_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: claim_jobs_of_kind
UPDATE jobs SET locked_by = :worker_id, locked_until = :until
WHERE id IN (SELECT id FROM jobs
             WHERE run_at <= :now AND kind = :kind
               AND (locked_until IS NULL OR locked_until < :now)
             ORDER BY run_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: claim_jobs_of_kinds
UPDATE jobs SET locked_by = :worker_id, locked_until = :until
WHERE id IN (SELECT id FROM jobs
             WHERE run_at <= :now AND kind = ANY(:kinds::text[])
               AND (locked_until IS NULL OR locked_until < :now)
             ORDER BY run_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: extend_lease
UPDATE jobs SET locked_until = :until WHERE id = ANY(:ids::bigint[]) AND locked_by = :worker_id

-- name: next_job_at
SELECT run_at FROM jobs WHERE locked_until IS NULL ORDER BY run_at LIMIT 1

-- name: next_job_at_of_kind
SELECT run_at FROM jobs WHERE locked_until IS NULL AND kind = :kind ORDER BY run_at LIMIT 1

-- name: next_job_at_of_kinds
SELECT run_at FROM jobs
WHERE locked_until IS NULL AND kind = ANY(:kinds::text[])
ORDER BY run_at LIMIT 1

-- name: delete_job
DELETE FROM jobs WHERE id = :id

-- name: release_job
UPDATE jobs SET run_at = :run_at, attempts = attempts + :attempted, locked_by = NULL,
                locked_until = NULL
WHERE id = :id

-- name: note_send_error
UPDATE messages SET last_error_code = :code, last_error_reason = :reason WHERE id = :id

-- name: begin_send
-- counts an attempt and returns what was known before it, in one statement (RETURNING reads the
-- new row: the count before is one less, and the first start was unknown before the first)
UPDATE messages SET send_attempts = send_attempts + 1,
                    send_started_at = coalesce(send_started_at, :now)
WHERE id = :id
RETURNING send_attempts - 1 AS send_attempts,
          CASE WHEN send_attempts = 1 THEN NULL ELSE send_started_at END AS send_started_at,
          last_error_code, last_error_reason

-- name: lock_workflow
-- the row lock makes a transition that must decide again wait for any other one in flight
SELECT id FROM workflows WHERE id = :workflow_id FOR UPDATE

-- name: lock_workflow_of_message
SELECT id FROM workflows
WHERE id = (SELECT workflow_id FROM messages WHERE id = :message_id) FOR UPDATE

-- name: lock_workflow_of_provider
SELECT id FROM workflows
WHERE id = (SELECT workflow_id FROM messages
            WHERE provider = :provider AND provider_message_id = :provider_message_id)
FOR UPDATE

-- name: claim_version
-- a decision made from this version of the workflow may be stored: nothing moved it since
UPDATE workflows SET version = version + 1 WHERE id = :id AND version = :version

-- name: bump_version
UPDATE workflows SET version = version + 1 WHERE id = :id

-- name: bump_version_of_messages
UPDATE workflows SET version = version + 1
WHERE id IN (SELECT workflow_id FROM messages WHERE id = ANY(:ids::text[]))

-- name: change_message
-- what a transition changes of a message (a NULL keeps the stored value)
UPDATE messages SET
    state = coalesce(:state, state), status = coalesce(:status, status),
    error_code = coalesce(:error_code, error_code),
    error_reason = coalesce(:error_reason, error_reason),
    provider = coalesce(:provider, provider),
    provider_message_id = coalesce(:provider_message_id, provider_message_id),
    price = coalesce(:price, price), currency = coalesce(:currency, currency),
    started_at = coalesce(:started_at, started_at), segments = coalesce(:segments, segments),
    updated_at = coalesce(:updated_at, updated_at)
WHERE id = :id

-- name: finish_workflow
UPDATE workflows SET state = :state, finished_at = :finished_at, updated_at = :finished_at
WHERE id = :id

-- name: insert_event
INSERT INTO events (workflow_id, message_id, at, kind, status, code, reason, source)
VALUES (:workflow_id, :message_id, :at, :kind, :status, :code, :reason, :source)

-- name: cancel_jobs
DELETE FROM jobs WHERE kind = :kind AND ref = :ref

-- name: queue_webhook
-- a webhook goes to its own URL, else its application's, else its account's, and is pending
-- with the job that delivers it; a status webhook or report with none of them is not stored
-- (its statuses are in the timeline), an inbound message is kept as no_url (it is the message)
WITH target AS (
    SELECT nullif(coalesce(
        :url::text,
        (SELECT CASE WHEN :inbound::boolean THEN inbound_url ELSE status_url END
         FROM applications WHERE id = :application_id),
        (SELECT CASE WHEN :inbound::boolean THEN inbound_url ELSE status_url END
         FROM accounts WHERE id = :account_id)), '') AS url
), hook AS (
    INSERT INTO webhooks (account_id, application_id, workflow_id, message_id, kind, url, body,
                          state, created_at, next_attempt_at)
    SELECT :account_id, :application_id, :workflow_id, :message_id, :kind, url, :body,
           CASE WHEN url IS NULL THEN 'no_url' ELSE 'pending' END, :created_at::double precision,
           CASE WHEN url IS NULL THEN NULL ELSE :created_at::double precision END
    FROM target
    WHERE url IS NOT NULL OR :inbound::boolean
    RETURNING id, url
)
INSERT INTO jobs (kind, ref, run_at, created_at)
SELECT :job_kind, id::text, :created_at::double precision, :created_at::double precision
FROM hook WHERE url IS NOT NULL

-- name: insert_orphan_receipt
INSERT INTO orphan_receipts (provider, provider_message_id, status, at, code, reason,
                             received_at, message_id)
VALUES (:provider, :provider_message_id, :status, :at, :code, :reason, :received_at,
        :message_id)

-- name: orphan_receipt_kept
SELECT 1 FROM orphan_receipts
WHERE provider = :provider AND provider_message_id = :provider_message_id LIMIT 1

-- name: matched_orphan_receipts
-- read, not deleted: each is dropped once applied, so a worker killed in between loses none
SELECT * FROM orphan_receipts AS o
WHERE (EXISTS (SELECT 1 FROM messages m WHERE m.provider = o.provider
                 AND m.provider_message_id = o.provider_message_id)
       OR EXISTS (SELECT 1 FROM message_parts p WHERE p.provider = o.provider
                    AND p.part_id = o.provider_message_id)
       OR EXISTS (SELECT 1 FROM messages m WHERE m.id = o.message_id))

-- name: orphan_receipts_of
SELECT * FROM orphan_receipts AS o
WHERE o.provider = :provider AND o.provider_message_id = :provider_message_id
  AND (EXISTS (SELECT 1 FROM messages m WHERE m.provider = o.provider
                 AND m.provider_message_id = o.provider_message_id)
       OR EXISTS (SELECT 1 FROM message_parts p WHERE p.provider = o.provider
                    AND p.part_id = o.provider_message_id))

-- name: insert_message_part
INSERT INTO message_parts (provider, part_id, message_id, seq)
VALUES (:provider, :part_id, :message_id, :seq)
ON CONFLICT DO NOTHING

-- name: lock_message_parts
-- every part of the message one part id names, in order and locked: receipts for two parts
-- arriving at once run in turn, and the second sees the first
SELECT * FROM message_parts
WHERE message_id = (SELECT message_id FROM message_parts
                    WHERE provider = :provider AND part_id = :part_id)
ORDER BY seq FOR UPDATE

-- name: record_part_status
UPDATE message_parts SET status = :status, code = :code, reason = :reason
WHERE provider = :provider AND part_id = :part_id

-- name: provider_ids_held
SELECT 1 FROM messages
WHERE provider = :provider AND provider_message_id = ANY(:ids::text[]) AND id <> :message_id
UNION ALL
SELECT 1 FROM message_parts
WHERE provider = :provider AND part_id = ANY(:ids::text[]) AND message_id <> :message_id
UNION ALL
SELECT 1 FROM orphan_receipts
WHERE provider = :provider AND provider_message_id = ANY(:ids::text[])
  AND received_at < :sent_since
LIMIT 1

-- name: release_provider_ids
UPDATE messages SET provider_message_id = NULL
WHERE provider = :provider AND provider_message_id = ANY(:ids::text[]) AND id <> :message_id
RETURNING id

-- name: release_part_ids
DELETE FROM message_parts
WHERE provider = :provider AND part_id = ANY(:ids::text[]) AND message_id <> :message_id
RETURNING message_id AS id

-- name: drop_stale_orphan_receipts
DELETE FROM orphan_receipts
WHERE provider = :provider AND provider_message_id = ANY(:ids::text[])
  AND received_at < :sent_since

-- ---- customer webhooks ---------------------------------------------------------------------

-- name: webhook
SELECT * FROM webhooks WHERE id = :id

-- name: webhooks_by_id
SELECT * FROM webhooks WHERE id = ANY(:ids::bigint[])

-- name: record_last_webhook_attempt
-- an attempt after which none follows (delivered, or given up): its job is done. One
-- statement, so one round trip that commits on its own: the attempt's outcome is durable as
-- soon after the receiver's answer as it can be
WITH attempt AS (
    INSERT INTO webhook_attempts (webhook_id, at, status_code, error, duration)
    VALUES (:webhook_id, :at, :status_code, :error, :duration)
), hook AS (
    UPDATE webhooks SET state = :state, attempts = attempts + 1,
        first_attempt_at = coalesce(first_attempt_at, :at), last_attempt_at = :at,
        next_attempt_at = NULL, last_status = :status_code, last_error = :error,
        delivered_at = CASE WHEN :state = 'delivered' THEN :at ELSE delivered_at END
    WHERE id = :webhook_id
)
DELETE FROM jobs WHERE id = :job_id

-- name: record_webhook_attempt
-- an attempt another follows: its job is due again then (one statement, as above)
WITH attempt AS (
    INSERT INTO webhook_attempts (webhook_id, at, status_code, error, duration)
    VALUES (:webhook_id, :at, :status_code, :error, :duration)
), hook AS (
    UPDATE webhooks SET state = :state, attempts = attempts + 1,
        first_attempt_at = coalesce(first_attempt_at, :at), last_attempt_at = :at,
        next_attempt_at = :next_attempt_at, last_status = :status_code, last_error = :error
    WHERE id = :webhook_id
)
UPDATE jobs SET run_at = :next_attempt_at, attempts = attempts + 1, locked_by = NULL,
                locked_until = NULL
WHERE id = :job_id

-- name: webhooks
SELECT * FROM webhooks
WHERE (:account_id::text IS NULL OR account_id = :account_id)
  AND (:workflow_id::text IS NULL OR workflow_id = :workflow_id)
  AND (:state::text IS NULL OR state = :state)
ORDER BY id LIMIT :limit

-- name: webhooks_newest
-- newest first, a page of those older than :before_id (what an operator looks at)
SELECT * FROM webhooks
WHERE (:account_id::text IS NULL OR account_id = :account_id)
  AND (:state::text IS NULL OR state = :state)
  AND id < :before_id
ORDER BY id DESC LIMIT :limit

-- name: webhook_attempts
SELECT * FROM webhook_attempts WHERE webhook_id = ANY(:ids::bigint[]) ORDER BY id

-- name: dead_webhooks
SELECT id FROM webhooks
WHERE state = 'dead' AND (:account_id::text IS NULL OR account_id = :account_id)
ORDER BY id FOR UPDATE

-- name: replayable_webhooks
SELECT id FROM webhooks
WHERE id = ANY(:ids::bigint[]) AND url IS NOT NULL
  AND (:account_id::text IS NULL OR account_id = :account_id)
ORDER BY id FOR UPDATE

-- name: replay_webhooks
-- their retry schedule starts over, and each gets one fresh job
UPDATE webhooks SET state = 'pending', attempts = 0, first_attempt_at = NULL,
                    next_attempt_at = :now
WHERE id = ANY(:ids::bigint[]);
DELETE FROM jobs WHERE kind = :kind AND ref = ANY(:refs::text[]);
INSERT INTO jobs (kind, ref, run_at, created_at)
SELECT :kind, ref, :now, :now FROM unnest(:refs::text[]) AS ref

-- ---- intake of the platforms' callbacks ----------------------------------------------------

-- name: messenger_thread
-- the messages a Messenger watermark covers: one conversation (page to user) of the account,
-- sent at or before it, not yet at the watermark's status (messages_messenger)
SELECT provider_message_id FROM messages
WHERE channel = 'messenger' AND provider = 'messenger' AND account_id = :account_id
  AND (recipient::jsonb ->> 'id') = :psid
  AND (sender::jsonb ->> 'id') = :page_id
  AND status = ANY(:statuses::text[])
  AND coalesce(send_started_at, started_at) <= :sent_until::double precision
  AND provider_message_id IS NOT NULL
ORDER BY coalesce(send_started_at, started_at), id COLLATE "C" LIMIT :limit

-- name: queue_inbound_webhook
-- an inbound message's webhook, once per inbound_ref (a platform repeats a callback until it
-- hears 200): a repeat inserts nothing and returns no row; it goes where queue_webhook sends
-- an inbound webhook
INSERT INTO webhooks (account_id, application_id, workflow_id, message_id, kind, url, body,
                      state, created_at, next_attempt_at, inbound_ref)
SELECT :account_id, :application_id, :workflow_id, :message_id, :kind, url, :body,
       CASE WHEN url IS NULL THEN 'no_url' ELSE 'pending' END, :created_at::double precision,
       CASE WHEN url IS NULL THEN NULL ELSE :created_at::double precision END, :inbound_ref
FROM (SELECT nullif(coalesce(
          :url::text,
          (SELECT inbound_url FROM applications WHERE id = :application_id),
          (SELECT inbound_url FROM accounts WHERE id = :account_id)), '') AS url) AS target
ON CONFLICT (inbound_ref) WHERE inbound_ref IS NOT NULL DO NOTHING
RETURNING id, url

-- ---- the sandbox provider's journal ---------------------------------------------------------

-- name: sandbox_receive
-- a resend of a message already accepted is recognised, not counted
INSERT INTO sandbox_messages (message_id, provider_message_id, channel, recipient, text,
                              attempts, received_at, receipts_due)
VALUES (:message_id, :provider_message_id, :channel, :recipient, :text, :attempts,
        :received_at, :receipts_due)
ON CONFLICT (message_id) DO UPDATE SET attempts = sandbox_messages.attempts
    + CASE WHEN sandbox_messages.received_at IS NULL THEN 1 ELSE 0 END
RETURNING *

-- name: sandbox_set_receipts
UPDATE sandbox_messages SET receipts_due = :receipts_due,
                            received_at = coalesce(:received_at, received_at)
WHERE provider_message_id = :provider_message_id

-- name: sandbox_messages
SELECT * FROM sandbox_messages ORDER BY seq

-- name: sandbox_owed
-- '[]' is how nothing owed is stored: only the few messages still owing are read
SELECT * FROM sandbox_messages WHERE receipts_due != '[]' ORDER BY seq

-- ---- retention -----------------------------------------------------------------------------
-- SKIP LOCKED: engines purging at once each take other rows

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys
WHERE (account_id, key) IN (SELECT account_id, key FROM idempotency_keys
                            WHERE created_at < :before LIMIT :limit FOR UPDATE SKIP LOCKED)

-- name: purge_orphan_receipts
DELETE FROM orphan_receipts
WHERE id IN (SELECT id FROM orphan_receipts
             WHERE received_at < :before LIMIT :limit FOR UPDATE SKIP LOCKED)

-- name: purgeable_webhooks
SELECT id FROM webhooks
WHERE workflow_id IS NULL AND created_at < :before AND state != 'pending'
LIMIT :limit FOR UPDATE SKIP LOCKED

-- name: purgeable_workflows
-- finished, and owing no webhook; the rows stay locked until the commit, so a transition of
-- one of them waits and then finds it gone
SELECT id FROM workflows w
WHERE finished_at < :before
  AND NOT EXISTS (SELECT 1 FROM webhooks h WHERE h.workflow_id = w.id AND h.state = 'pending')
ORDER BY finished_at LIMIT :limit FOR UPDATE SKIP LOCKED

-- name: delete_webhooks
DELETE FROM jobs WHERE kind = :kind AND ref = ANY(:refs::text[]);
DELETE FROM webhook_attempts WHERE webhook_id = ANY(:ids::bigint[]);
DELETE FROM webhooks WHERE id = ANY(:ids::bigint[])

-- name: webhooks_of_workflows
SELECT id FROM webhooks WHERE workflow_id = ANY(:ids::text[])

-- name: delete_workflows
-- with all that hangs off them (their webhooks are deleted first, by delete_webhooks)
DELETE FROM jobs WHERE ref = ANY(:ids::text[])
    OR ref IN (SELECT id FROM messages WHERE workflow_id = ANY(:ids::text[]));
DELETE FROM message_parts
WHERE message_id IN (SELECT id FROM messages WHERE workflow_id = ANY(:ids::text[]));
DELETE FROM sandbox_messages
WHERE message_id IN (SELECT id FROM messages WHERE workflow_id = ANY(:ids::text[]));
DELETE FROM events WHERE workflow_id = ANY(:ids::text[]);
DELETE FROM messages WHERE workflow_id = ANY(:ids::text[]);
DELETE FROM workflows WHERE id = ANY(:ids::text[])

-- ---- status (cascade status) -----------------------------------------------------------------

-- name: has_schema_migrations
-- whether the database (the schema search_path selects) has been migrated at all
SELECT to_regclass('schema_migrations') IS NOT NULL

-- name: schema_versions
SELECT version FROM schema_migrations ORDER BY version

-- name: store_counts
SELECT (SELECT count(*) FROM accounts) AS accounts,
       (SELECT count(*) FROM jobs) AS jobs,
       (SELECT count(*) FROM jobs WHERE run_at <= :now) AS jobs_due,
       (SELECT count(*) FROM webhooks WHERE state = 'pending') AS pending_webhooks,
       (SELECT count(*) FROM webhooks WHERE state = 'dead') AS dead_webhooks

-- ---- timelines and lists that tell the story (issue 12) ------------------------------------

-- name: note_retry
-- a send's transient error as a timeline entry, with when the send is tried next (written in
-- the transaction that releases the send job for that attempt)
INSERT INTO events (workflow_id, message_id, at, kind, code, reason, source, next_at)
SELECT workflow_id, id, :at::double precision, 'retry', :code::integer, :reason::text,
       :source::text, :next_at::double precision
FROM messages WHERE id = :message_id

-- name: dispatches
-- as workflows, without plain messages (POST /v0.1/messages): GET /v0.1/dispatch lists these
SELECT * FROM workflows
WHERE account_id = :account_id
  AND created_at <= :before_at
  AND (created_at < :before_at OR id COLLATE "C" < :before_id)
  AND created_at >= :created_after AND created_at < :created_before
  AND (:state::text IS NULL OR state = :state)
  AND surface <> 'messages'
ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT :limit

-- name: messenger_unsent
-- the messages a Messenger watermark covers whose send is still in flight: one conversation
-- (page to user) of the account, begun at or before it, no answer from the Graph API yet, not
-- yet at the watermark's status (messages_messenger)
SELECT id FROM messages
WHERE channel = 'messenger' AND provider_message_id IS NULL AND account_id = :account_id
  AND (recipient::jsonb ->> 'id') = :psid
  AND (sender::jsonb ->> 'id') = :page_id
  AND (status IS NULL OR status = ANY(:statuses::text[]))
  AND send_started_at <= :sent_until::double precision
ORDER BY send_started_at, id COLLATE "C" LIMIT :limit

-- ---- inbound messages named by their uuid (issue 13: PATCH /v1/messages/{uuid}) -------------

-- name: record_inbound_message
-- the uuid an inbound message's webhook carried, its channel and the address it was sent to,
-- on the webhook just queued for it (queue_inbound_webhook), in the same transaction
UPDATE webhooks
SET inbound_uuid = :inbound_uuid, inbound_channel = :inbound_channel, inbound_to = :inbound_to
WHERE id = :id

-- name: find_inbound_message
-- an inbound message of the account by the uuid its webhook carried (webhooks_inbound_uuid)
SELECT account_id, inbound_uuid AS message_uuid, inbound_channel AS channel, inbound_to AS "to",
       inbound_ref AS ref, created_at AS received_at
FROM webhooks
WHERE inbound_uuid = :message_uuid AND account_id = :account_id

-- ---- the dashboard ---------------------------------------------------------------------------

-- name: messages_searched
-- as messages, also by recipient (its number or id) and client_ref, for the dashboard's search
SELECT * FROM messages
WHERE account_id = :account_id
  AND created_at <= :before_at
  AND (created_at < :before_at OR id COLLATE "C" < :before_id)
  AND created_at >= :created_after AND created_at < :created_before
  AND (:state::text IS NULL OR status = :state)
  AND (:channel::text IS NULL OR channel = :channel)
  AND (:recipient::text IS NULL OR (recipient::jsonb ->> 'number') = :recipient
       OR (recipient::jsonb ->> 'id') = :recipient)
  AND (:client_ref::text IS NULL OR client_ref = :client_ref)
ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT :limit

-- name: insert_dashboard_session
-- a signed-in browser; sessions that expired are deleted in the same statement
WITH expired AS (DELETE FROM dashboard_sessions WHERE expires_at <= :now::double precision)
INSERT INTO dashboard_sessions (token_sha256, account_id, csrf_token, created_at, expires_at)
VALUES (:token_sha256, :account_id, :csrf_token, :created_at, :expires_at)

-- name: dashboard_session
SELECT * FROM dashboard_sessions
WHERE token_sha256 = :token_sha256 AND expires_at > :now::double precision

-- name: delete_dashboard_session
DELETE FROM dashboard_sessions WHERE token_sha256 = :token_sha256

-- name: note_sign_in_failure
-- one more failed sign-in; a count whose last failure is older than :since starts again at 1
INSERT INTO dashboard_sign_in_failures (account_id, failures, last_at)
VALUES (:account_id, 1, :now::double precision)
ON CONFLICT (account_id) DO UPDATE SET
    failures = CASE WHEN dashboard_sign_in_failures.last_at < :since::double precision THEN 1
                    ELSE dashboard_sign_in_failures.failures + 1 END,
    last_at = excluded.last_at
RETURNING failures, last_at

-- name: sign_in_failures
SELECT failures, last_at FROM dashboard_sign_in_failures WHERE account_id = :account_id

-- name: clear_sign_in_failures
DELETE FROM dashboard_sign_in_failures WHERE account_id = :account_id

-- name: put_smpp_bind
-- an SMPP connection's state changed (the engine writes only then, never per message)
INSERT INTO smpp_binds (name, bound, last_error, changed_at)
VALUES (:name, :bound::boolean, :last_error, :changed_at::double precision)
ON CONFLICT (name) DO UPDATE SET
    bound = excluded.bound, last_error = excluded.last_error, changed_at = excluded.changed_at

-- name: smpp_binds
SELECT name, bound, last_error, changed_at FROM smpp_binds ORDER BY name

-- name: change_message_status
-- change_message for a change that sets no provider id (most: a receipt's status, a step's
-- state): the provider columns are left out of the SET list, so the indexes over them (and
-- their expressions) are not written again
UPDATE messages SET
    state = coalesce(:state, state), status = coalesce(:status, status),
    error_code = coalesce(:error_code, error_code),
    error_reason = coalesce(:error_reason, error_reason),
    price = coalesce(:price, price), currency = coalesce(:currency, currency),
    started_at = coalesce(:started_at, started_at), segments = coalesce(:segments, segments),
    updated_at = coalesce(:updated_at, updated_at)
WHERE id = :id

-- name: renew_smpp_node
-- a node holding an SMPP connection says it is alive until :expires_at
INSERT INTO smpp_nodes (connection, node, expires_at)
VALUES (:connection, :node, :expires_at::double precision)
ON CONFLICT (connection, node) DO UPDATE SET expires_at = excluded.expires_at

-- name: forget_expired_smpp_nodes
DELETE FROM smpp_nodes WHERE connection = :connection AND expires_at <= :now::double precision

-- name: live_smpp_nodes
SELECT count(*) FROM smpp_nodes
WHERE connection = :connection AND expires_at > :now::double precision

-- name: drop_smpp_node
DELETE FROM smpp_nodes WHERE connection = :connection AND node = :node

-- name: drop_orphan_receipt
DELETE FROM orphan_receipts WHERE id = :id

-- name: serialize_smpp_nodes
-- renewals of one connection's nodes one after another: two nodes joining at once each saw
-- only its own uncommitted row and both took the whole throughput
SELECT pg_advisory_xact_lock(hashtext('cascade_smpp_nodes:' || :connection::text))

-- name: transition_read_by_workflows
-- the workflows of a batch of transitions, each with its messages (docs/design.md §4)
SELECT m.*, w.application_id, w.surface, w.state AS workflow_state,
       w.created_at AS workflow_created_at, w.updated_at AS workflow_updated_at,
       w.finished_at AS workflow_finished_at, w.version AS workflow_version,
       coalesce(nullif(a.status_url, ''), nullif(acc.status_url, '')) IS NOT NULL
           AS status_url_set
FROM messages m JOIN workflows w ON w.id = m.workflow_id
     LEFT JOIN accounts acc ON acc.id = w.account_id
     LEFT JOIN applications a ON a.id = w.application_id
WHERE m.workflow_id = ANY(:ids::text[]) ORDER BY m.workflow_id, m.step

-- name: transition_read_by_messages
SELECT m.*, w.application_id, w.surface, w.state AS workflow_state,
       w.created_at AS workflow_created_at, w.updated_at AS workflow_updated_at,
       w.finished_at AS workflow_finished_at, w.version AS workflow_version,
       coalesce(nullif(a.status_url, ''), nullif(acc.status_url, '')) IS NOT NULL
           AS status_url_set
FROM messages m JOIN workflows w ON w.id = m.workflow_id
     LEFT JOIN accounts acc ON acc.id = w.account_id
     LEFT JOIN applications a ON a.id = w.application_id
WHERE m.workflow_id IN (SELECT workflow_id FROM messages WHERE id = ANY(:ids::text[]))
ORDER BY m.workflow_id, m.step

-- name: transition_read_by_provider_ids
SELECT m.*, w.application_id, w.surface, w.state AS workflow_state,
       w.created_at AS workflow_created_at, w.updated_at AS workflow_updated_at,
       w.finished_at AS workflow_finished_at, w.version AS workflow_version,
       coalesce(nullif(a.status_url, ''), nullif(acc.status_url, '')) IS NOT NULL
           AS status_url_set
FROM messages m JOIN workflows w ON w.id = m.workflow_id
     LEFT JOIN accounts acc ON acc.id = w.account_id
     LEFT JOIN applications a ON a.id = w.application_id
WHERE m.workflow_id IN (SELECT workflow_id FROM messages
                        WHERE provider = :provider AND provider_message_id = ANY(:ids::text[]))
ORDER BY m.workflow_id, m.step

-- name: workflows_stored
-- which of these workflows are stored (an accept whose commit lost its answer asks)
SELECT id FROM workflows WHERE id = ANY(:ids::text[])
