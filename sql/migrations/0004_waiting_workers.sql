-- NOTIFY takes a cluster-wide lock that is held until the end of commit, so
-- notifying transactions commit one at a time. A worker whose last claim came
-- up short marks itself waiting; producers notify only while some worker
-- waits (or always, with the setting notify = 'always').

ALTER TABLE hopper._workers ADD COLUMN waiting boolean NOT NULL DEFAULT false;

INSERT INTO hopper.settings (name, value) VALUES ('notify', 'when_waiting');

-- These internal functions change their result type in this release; the
-- function files recreate them.
DROP FUNCTION IF EXISTS hopper._claim(text, text[], integer, text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._complete(bigint[], jsonb[], text);
DROP FUNCTION IF EXISTS hopper._lock_candidates(text[], integer, text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._delete_completed(bigint[], jsonb[], text);
DROP FUNCTION IF EXISTS hopper._insert_specs(hopper.job_spec[]);
DROP FUNCTION IF EXISTS hopper._add_keyed_job(hopper.job_spec);
DROP FUNCTION IF EXISTS hopper._add_specs(hopper.job_spec[]);
DROP FUNCTION IF EXISTS hopper._added(hopper._jobs, text);
