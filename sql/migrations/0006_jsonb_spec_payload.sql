-- A spec's payload is stored as jsonb, so job_spec holds it as jsonb: the
-- checks and the INSERT then read the value a caller's jsonb (or the jsonb
-- array form of add_jobs) gave, instead of parsing its text up to three times.
-- add_job keeps its json parameter; json casts to jsonb on assignment, and a
-- literal in ROW(...)::hopper.job_spec is read as jsonb.
ALTER TYPE hopper.job_spec ALTER ATTRIBUTE payload TYPE jsonb;
