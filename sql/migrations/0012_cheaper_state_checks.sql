-- Every inserted or updated job row evaluates the table's CHECK constraints
-- and the predicate of each partial index. Three constraints and two
-- predicates compared state with lists of names: a pending job took 13 text
-- comparisons before it was stored, now 4. One constraint tests state once
-- per row against the rules of all three (pending first), and
-- jobs_finished_at tests the column it indexes, whose nullness those rules
-- tie to the state. jobs_running_locked_at keeps its predicate: heartbeat and
-- rescue find a worker's running jobs through it with "state = 'running'"
-- alone, which does not imply "locked_at IS NOT NULL" to the planner.
ALTER TABLE hopper._jobs
DROP CONSTRAINT jobs_state_known,
DROP CONSTRAINT jobs_locked_iff_running,
DROP CONSTRAINT jobs_finished_at_iff_finished,
ADD CONSTRAINT jobs_state_consistent CHECK (
    CASE
        WHEN state IN ('pending', 'scheduled', 'waiting')
            THEN finished_at IS NULL AND (locked_at IS NULL OR locked_by IS NULL)
        WHEN state = 'running'
            THEN finished_at IS NULL AND locked_at IS NOT NULL AND locked_by IS NOT NULL
        WHEN state IN ('completed', 'failed', 'cancelled')
            THEN finished_at IS NOT NULL AND (locked_at IS NULL OR locked_by IS NULL)
        ELSE false
    END
);

-- finished_at is set exactly when the job is finished
DROP INDEX hopper.jobs_finished_at;

CREATE INDEX jobs_finished_at ON hopper._jobs (finished_at)
WHERE finished_at IS NOT NULL;
