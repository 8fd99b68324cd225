-- An engine that runs some kinds of job only (CASCADE_ENGINE_JOBS) finds its next job
-- without reading past the others (e.g. a webhook-only worker beside 100,000 pending timers).
CREATE INDEX jobs_kind_due ON jobs (kind, run_at);
-- A transition cancels a message's jobs by (kind, ref): with the kind in the ref index too, that
-- lookup keeps to it rather than reading every job of the kind through jobs_kind_due.
DROP INDEX jobs_ref;
CREATE INDEX jobs_ref ON jobs (ref, kind);
