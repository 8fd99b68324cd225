-- A send's transient error is a timeline entry of kind 'retry' (written with the retry
-- itself), and this is when the send is tried next.
ALTER TABLE events ADD COLUMN next_at REAL;
