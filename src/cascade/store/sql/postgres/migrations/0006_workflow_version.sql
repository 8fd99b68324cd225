-- Bumped by every write that changes what a transition decides from (its messages' state and
-- statuses, their last send error, the workflow's state). A transition loads and decides
-- before its transaction, then writes only if the version is still the one it read.
ALTER TABLE workflows ADD COLUMN version integer NOT NULL DEFAULT 0;
