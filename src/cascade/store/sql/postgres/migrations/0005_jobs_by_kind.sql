-- An engine that runs some kinds of job only (CASCADE_ENGINE_JOBS) finds its next job
-- without reading past the others (e.g. a webhook-only worker beside 100,000 pending timers).
CREATE INDEX jobs_kind_due ON jobs (kind, run_at);
