-- Cheaper writes on the hot paths.

-- _insert_jobs, which returns the inserted records, replaces _insert_specs,
-- which returned their ids.
DROP FUNCTION IF EXISTS hopper._insert_specs(hopper.job_spec[]);

-- _lock_candidates also returns the row versions it locked, so that _claim
-- updates them without an index descent.
DROP FUNCTION IF EXISTS hopper._lock_candidates(text[], integer, text[], timestamptz);

-- Job dependencies (SPEC.md 3.4) are not built yet and their table is always
-- empty, but its cascading foreign key fired a trigger and a query (a scan:
-- no index leads with job_id) for every deleted job, half the cost of
-- completing a job with no retention. The dependencies work decides how the
-- edges of a deleted job go away.
ALTER TABLE hopper._job_dependencies DROP CONSTRAINT _job_dependencies_job_id_fkey;
