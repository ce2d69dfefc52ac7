-- Completing jobs (SPEC.md 4.2) and the admin complete_jobs (4.5).

-- Completes the given jobs and returns them as completed. With owner, only
-- jobs that owner currently holds (the fence: a stale worker changes
-- nothing); without, only active jobs nobody holds. With completed_retention
-- 0 the rows are deleted instead of kept.
CREATE OR REPLACE FUNCTION hopper._complete(
    job_ids bigint[], results jsonb[], owner text
) RETURNS SETOF hopper._jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done hopper._jobs[];
BEGIN
    -- No separate SELECT ... FOR UPDATE: the UPDATE (or DELETE) re-checks its
    -- WHERE on the row it locks, which is the fence, and locking first would
    -- write every row twice. id = any(...) keeps it on the primary key.
    IF hopper._setting('completed_retention')::interval = interval '0' THEN
        WITH gone AS (
            DELETE FROM hopper._jobs AS j
            USING unnest(job_ids, results) AS r (id, result)
            WHERE
                j.id = r.id AND j.id = any(job_ids)
                AND CASE
                    WHEN owner IS NULL THEN j.state IN ('waiting', 'scheduled', 'pending')
                    ELSE j.state = 'running' AND j.locked_by = owner
                END
            RETURNING j AS job, r.result
        )

        SELECT array_agg(jsonb_populate_record(g.job, jsonb_build_object(
            'state', 'completed', 'result', g.result, 'locked_at', NULL,
            'locked_by', NULL, 'finished_at', now(), 'updated_at', now()
        )))
        INTO done
        FROM gone AS g;
    ELSE
        WITH completed AS (
            UPDATE hopper._jobs AS j SET
                state = 'completed',
                result = r.result,
                locked_at = NULL,
                locked_by = NULL,
                finished_at = now(),
                updated_at = now()
            FROM unnest(job_ids, results) AS r (id, result)
            WHERE
                j.id = r.id AND j.id = any(job_ids)
                AND CASE
                    WHEN owner IS NULL THEN j.state IN ('waiting', 'scheduled', 'pending')
                    ELSE j.state = 'running' AND j.locked_by = owner
                END
            RETURNING j.*
        )

        SELECT array_agg(c) INTO done FROM completed AS c;
    END IF;
    IF owner IS NOT NULL THEN
        PERFORM hopper._release_queue_slots(ARRAY(SELECT d.queue_name FROM unnest(done) AS d));
    END IF;
    RETURN QUERY SELECT * FROM unnest(done) AS d ORDER BY d.id;
END
$$;

-- Completes one job held by worker_id and stores result. Returns the job, or
-- NULL when worker_id does not hold it (nothing changes then).
CREATE OR REPLACE FUNCTION hopper.complete_job(
    worker_id text, job_id bigint, result jsonb DEFAULT NULL
) RETURNS hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are cached once per session, not re-planned per call; a generic
-- plan's cost estimate can pass jit_above_cost, and JIT never pays off here
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    completed hopper.jobs;
BEGIN
    PERFORM hopper._check_worker_id('complete_job', worker_id);
    PERFORM hopper._check_required('complete_job', 'job_id', job_id IS NULL);
    SELECT p.* INTO completed
    FROM hopper._complete(ARRAY[job_id], ARRAY[result], worker_id) AS c
    CROSS JOIN LATERAL hopper._present(c) AS p;
    RETURN completed;
END
$$;

-- The batch form of complete_job: returns the jobs it completed.
CREATE OR REPLACE FUNCTION hopper.complete_claimed_jobs(
    worker_id text, job_ids bigint[], results jsonb[] DEFAULT NULL
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are cached once per session, not re-planned per call; a generic
-- plan's cost estimate can pass jit_above_cost, and JIT never pays off here
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
BEGIN
    PERFORM hopper._check_worker_id('complete_claimed_jobs', worker_id);
    PERFORM hopper._check_required('complete_claimed_jobs', 'job_ids', job_ids IS NULL);
    PERFORM hopper._check_batch_size('complete_claimed_jobs', 'job_ids', cardinality(job_ids));
    IF results IS NOT NULL THEN
        PERFORM hopper._check_same_length(
            'complete_claimed_jobs', 'results', cardinality(results), cardinality(job_ids)
        );
    END IF;
    RETURN QUERY
    SELECT p.*
    FROM hopper._complete(job_ids, results, worker_id) AS c
    CROSS JOIN LATERAL hopper._present(c) AS p
    ORDER BY p.id;
END
$$;

-- Admin (graphile-compatible): marks active jobs nobody holds completed.
CREATE OR REPLACE FUNCTION hopper.complete_jobs(job_ids bigint[])
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_required('complete_jobs', 'job_ids', job_ids IS NULL);
    RETURN QUERY
    SELECT p.*
    FROM hopper._complete(job_ids, NULL, NULL) AS c
    CROSS JOIN LATERAL hopper._present(c) AS p
    ORDER BY p.id;
END
$$;
