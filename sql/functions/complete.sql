-- Completing jobs (SPEC.md 4.2) and the admin complete_jobs (4.5).

-- Completes the given jobs and returns them as completed. With owner, only
-- jobs that owner currently holds (the fence: a stale worker changes
-- nothing); without, only active jobs nobody holds. With completed_retention
-- 0 the rows are deleted instead of kept.
CREATE OR REPLACE FUNCTION hopper._complete(
    job_ids bigint[], results jsonb[], owner text
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done_ids bigint[];
    done_queues text[];
    gone hopper._jobs[];
BEGIN
    IF hopper._setting('completed_retention')::interval = interval '0' THEN
        gone := hopper._delete_completed(job_ids, results, owner);
        done_queues := ARRAY(SELECT g.queue_name FROM unnest(gone) AS g);
    ELSE
        -- No separate SELECT ... FOR UPDATE: the UPDATE re-checks its WHERE on
        -- the row it locks, which is the fence, and locking first would write
        -- every row twice. id = any(...) keeps it on the primary key.
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
            RETURNING j.id, j.queue_name
        )

        SELECT array_agg(c.id), array_agg(c.queue_name)
        INTO done_ids, done_queues
        FROM completed AS c;
    END IF;
    IF owner IS NOT NULL THEN
        PERFORM hopper._release_queue_slots(done_queues);
    END IF;
    IF gone IS NOT NULL THEN
        RETURN QUERY
        SELECT p.* FROM unnest(gone) AS g
        CROSS JOIN LATERAL hopper._present(g) AS p
        ORDER BY p.id;
    ELSE
        -- read back through the view: cheaper per row than building records
        RETURN QUERY
        SELECT v.* FROM hopper.jobs AS v WHERE v.id = any(done_ids) ORDER BY v.id;
    END IF;
END
$$;

-- The completed_retention 0 form of _complete: deletes the jobs and returns
-- them as they would read completed.
CREATE OR REPLACE FUNCTION hopper._delete_completed(
    job_ids bigint[], results jsonb[], owner text
) RETURNS hopper._jobs[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone hopper._jobs[];
BEGIN
    WITH deleted AS (
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

    SELECT array_agg(jsonb_populate_record(d.job, jsonb_build_object(
        'state', 'completed', 'result', d.result, 'locked_at', NULL,
        'locked_by', NULL, 'finished_at', now(), 'updated_at', now()
    )))
    INTO gone
    FROM deleted AS d;
    RETURN coalesce(gone, '{}');
END
$$;

-- Completes one job held by worker_id and stores result. Returns the job, or
-- NULL when worker_id does not hold it (nothing changes then).
CREATE OR REPLACE FUNCTION hopper.complete_job(
    worker_id text, job_id bigint, result jsonb DEFAULT NULL
) RETURNS hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are cached once per session, not re-planned per call: one made while
-- the table was small must still use its indexes, and JIT never pays off here
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    completed hopper.jobs;
BEGIN
    PERFORM hopper._check_worker_id('complete_job', worker_id);
    PERFORM hopper._check_required('complete_job', 'job_id', job_id IS NULL);
    SELECT c.* INTO completed
    FROM hopper._complete(ARRAY[job_id], ARRAY[result], worker_id) AS c;
    RETURN completed;
END
$$;

-- The batch form of complete_job: returns the jobs it completed.
CREATE OR REPLACE FUNCTION hopper.complete_claimed_jobs(
    worker_id text, job_ids bigint[], results jsonb[] DEFAULT NULL
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are cached once per session, not re-planned per call: one made while
-- the table was small must still use its indexes, and JIT never pays off here
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
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
    RETURN QUERY SELECT c.* FROM hopper._complete(job_ids, results, worker_id) AS c;
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
    RETURN QUERY SELECT c.* FROM hopper._complete(job_ids, NULL, NULL) AS c;
END
$$;
