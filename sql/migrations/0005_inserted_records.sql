-- _insert_jobs, which returns the inserted records, replaces _insert_specs,
-- which returned their ids.

DROP FUNCTION IF EXISTS hopper._insert_specs(hopper.job_spec[]);
