-- Completing jobs (SPEC.md 4.2) and the admin complete_jobs (4.5).

-- Completes the given jobs and returns the ids it completed. With
-- completed_retention 0 the rows are deleted instead, and with with_rows
-- gone holds them as they were. With owner, only jobs that owner currently
-- holds (the fence: a stale worker changes nothing); without, only active
-- jobs nobody holds. Then settles the jobs waiting on them.
CREATE OR REPLACE FUNCTION hopper._complete_ids(
    job_ids bigint[], results jsonb[], owner text, with_rows boolean,
    OUT ids bigint[], OUT gone hopper._jobs[]
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done_queues text[];
    done_tags text[];
BEGIN
    -- the settings read and the tests below, rather than calls: each call
    -- costs a completion after an idle pause 30-60 us
    IF (
        SELECT s.value::interval FROM hopper.settings AS s WHERE s.name = 'completed_retention'
    ) = interval '0' THEN
        WITH deleted AS (
            DELETE FROM hopper._jobs AS j
            WHERE
                j.id = any(job_ids)
                AND CASE
                    WHEN owner IS NULL THEN j.state IN ('waiting', 'scheduled', 'pending')
                    ELSE j.state = 'running' AND j.locked_by = owner
                END
            RETURNING j.id, j.queue_name, j.tags, CASE WHEN with_rows THEN j END AS job
        )

        SELECT
            array_agg(d.id), array_agg(d.queue_name), array_agg(d.job) FILTER (WHERE with_rows),
            (SELECT array_agg(DISTINCT t.tag) FROM deleted AS e, unnest(e.tags) AS t (tag))
        INTO ids, done_queues, gone, done_tags
        FROM deleted AS d;
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
            RETURNING j.id, j.queue_name, j.tags
        )

        SELECT
            array_agg(c.id), array_agg(c.queue_name),
            (SELECT array_agg(DISTINCT t.tag) FROM completed AS e, unnest(e.tags) AS t (tag))
        INTO ids, done_queues, done_tags
        FROM completed AS c;
    END IF;
    IF owner IS NOT NULL AND cardinality(array_remove(done_queues, NULL)) > 0 THEN
        PERFORM hopper._release_queue_slots(done_queues);
    END IF;
    -- a later statement than the UPDATE: see dependencies.sql. The test is
    -- _settle_dependents' own first one: most completions have nothing to
    -- settle.
    IF
        ids IS NOT NULL
        AND (done_tags IS NOT NULL OR EXISTS (SELECT FROM hopper._job_dependencies))
    THEN
        PERFORM hopper._settle_dependents(ids, done_tags);
    END IF;
    ids := coalesce(ids, '{}');
END
$$;

-- The arguments of a batch completion by a worker.
CREATE OR REPLACE FUNCTION hopper._check_completion(
    fn text, worker_id text, job_ids bigint[], results jsonb[]
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_worker_id(fn, worker_id);
    PERFORM hopper._check_required(fn, 'job_ids', job_ids IS NULL);
    PERFORM hopper._check_batch_size(fn, 'job_ids', cardinality(job_ids));
    IF results IS NOT NULL THEN
        PERFORM hopper._check_same_length(fn, 'results', cardinality(results), cardinality(job_ids));
    END IF;
END
$$;

-- _complete_ids, returning the jobs as completed.
CREATE OR REPLACE FUNCTION hopper._complete(
    job_ids bigint[], results jsonb[], owner text
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done_ids bigint[];
    gone hopper._jobs[];
BEGIN
    SELECT c.ids, c.gone INTO done_ids, gone
    FROM hopper._complete_ids(job_ids, results, owner, true) AS c;
    IF gone IS NULL THEN
        -- read back through the view: cheaper per row than building records
        RETURN QUERY
        SELECT v.* FROM hopper.jobs AS v WHERE v.id = any(done_ids) ORDER BY v.id;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT p.*
    FROM unnest(gone) AS g
    LEFT JOIN unnest(job_ids, results) AS r (id, result) ON g.id = r.id
    CROSS JOIN LATERAL hopper._present(jsonb_populate_record(g, jsonb_build_object(
        'state', 'completed', 'result', r.result, 'locked_at', NULL,
        'locked_by', NULL, 'finished_at', now(), 'updated_at', now()
    ))) AS p
    ORDER BY p.id;
END
$$;

-- Completes one job held by worker_id and stores result. Returns the job, or
-- NULL when worker_id does not hold it (nothing changes then).
CREATE OR REPLACE FUNCTION hopper.complete_job(
    worker_id text, job_id bigint, result jsonb DEFAULT NULL
) RETURNS hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
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
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM hopper._check_completion('complete_claimed_jobs', worker_id, job_ids, results);
    RETURN QUERY SELECT c.* FROM hopper._complete(job_ids, results, worker_id) AS c;
END
$$;

-- complete_claimed_jobs for callers that need no rows back (the worker):
-- returns the ids it completed; a missing id was not held by worker_id.
CREATE OR REPLACE FUNCTION hopper.complete_claimed_job_ids(
    worker_id text, job_ids bigint[], results jsonb[] DEFAULT NULL
) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
BEGIN
    -- what every check of _check_completion requires, in one test; only a
    -- call failing it runs the checks that say which argument is wrong
    IF NOT coalesce(
        worker_id !~ '^\s*$' AND length(worker_id) <= 128
        AND cardinality(job_ids) <= (
            SELECT s.value::integer FROM hopper.settings AS s WHERE s.name = 'max_batch_size'
        )
        AND (results IS NULL OR cardinality(results) = cardinality(job_ids)),
        false
    ) THEN
        PERFORM hopper._check_completion('complete_claimed_job_ids', worker_id, job_ids, results);
    END IF;
    RETURN (hopper._complete_ids(job_ids, results, worker_id, false)).ids;
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
