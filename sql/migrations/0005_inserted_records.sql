-- _insert_jobs, which returns the inserted records, replaces _insert_specs,
-- which returned their ids.

DROP FUNCTION IF EXISTS hopper._insert_specs(hopper.job_spec[]);

-- _lock_candidates also returns the row versions it locked, so that _claim
-- updates them without an index descent.
DROP FUNCTION IF EXISTS hopper._lock_candidates(text[], integer, text[], timestamptz);
