-- Bumped by every write that changes what a transition decides from (its messages' state and
-- statuses, their last send error, the workflow's state). A transition loads and decides
-- before it takes the write lock, then writes only if the version is still the one it read.
ALTER TABLE workflows ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
