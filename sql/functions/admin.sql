-- Admin and status functions (SPEC.md 4.5, 4.6, 4.8). Admin functions return
-- the jobs they changed and skip the rest silently; they never touch
-- finished jobs.

-- Updates the given non-null fields of active jobs nobody holds.
CREATE OR REPLACE FUNCTION hopper.reschedule_jobs(
    job_ids bigint[],
    run_at timestamptz DEFAULT NULL,
    priority integer DEFAULT NULL,
    attempts integer DEFAULT NULL,
    max_attempts integer DEFAULT NULL
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_required('reschedule_jobs', 'job_ids', job_ids IS NULL);
    IF priority NOT BETWEEN -32768 AND 32767 THEN
        PERFORM hopper._raise('reschedule_jobs', '22023', format(
            'priority must be between -32768 and 32767 (got %s)', priority
        ));
    END IF;
    IF max_attempts NOT BETWEEN 1 AND 32767 THEN
        PERFORM hopper._raise('reschedule_jobs', '22023', format(
            'max_attempts must be between 1 and 32767 (got %s)', max_attempts
        ));
    END IF;
    IF attempts NOT BETWEEN 0 AND 32766 THEN
        PERFORM hopper._raise('reschedule_jobs', '22023', format(
            'attempts must be between 0 and 32766 (got %s)', attempts
        ));
    END IF;
    -- a job left with no attempt to make would never run nor fail
    IF EXISTS (
        SELECT FROM hopper._jobs AS j
        WHERE j.id = any(job_ids) AND j.state IN ('waiting', 'scheduled', 'pending')
            AND coalesce(reschedule_jobs.attempts, j.attempts)
            >= coalesce(reschedule_jobs.max_attempts, j.max_attempts)
    ) THEN
        PERFORM hopper._raise('reschedule_jobs', '22023',
            'attempts must stay below max_attempts');
    END IF;
    RETURN QUERY
    WITH rescheduled AS (
        UPDATE hopper._jobs AS j SET
            run_at = coalesce(reschedule_jobs.run_at, j.run_at),
            state = CASE
                WHEN j.state = 'waiting' THEN 'waiting'
                WHEN coalesce(reschedule_jobs.run_at, j.run_at) > now() THEN 'scheduled'
                ELSE 'pending'
            END,
            priority = coalesce(reschedule_jobs.priority, j.priority),
            attempts = coalesce(reschedule_jobs.attempts, j.attempts),
            max_attempts = coalesce(reschedule_jobs.max_attempts, j.max_attempts),
            revision = j.revision + 1,
            updated_at = now()
        WHERE j.id = any(job_ids) AND j.state IN ('waiting', 'scheduled', 'pending')
        RETURNING j.*
    )

    SELECT p.* FROM rescheduled AS r
    CROSS JOIN LATERAL hopper._present(r) AS p
    ORDER BY p.id;
    IF FOUND THEN
        PERFORM hopper._notify_jobs();
    END IF;
END
$$;

-- A removed job never completes (and, gone, would count as completed): its
-- waiting dependents are cancelled, and the jobs behind its tags settled.
CREATE OR REPLACE FUNCTION hopper._cancel_dependents_of_removed(removed hopper._jobs)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dependents hopper._jobs[];
BEGIN
    WITH spent AS (
        DELETE FROM hopper._job_dependencies AS d
        WHERE d.prerequisite_id = removed.id
        RETURNING d.job_id
    ),

    cancelled AS (
        UPDATE hopper._jobs AS w SET
            state = 'cancelled',
            last_error = format('prerequisite job %s removed', removed.id),
            finished_at = now(),
            updated_at = now()
        FROM spent AS s
        WHERE w.id = s.job_id AND w.state = 'waiting'
        RETURNING w.*
    )

    SELECT array_agg(c) INTO dependents FROM cancelled AS c;
    PERFORM hopper._settle_dependents_of(dependents);
    IF removed.tags IS NOT NULL THEN
        PERFORM hopper._settle_dependents('{}', removed.tags);
    END IF;
END
$$;

-- Deletes the active job holding job_key if nobody holds it; a running one
-- keeps running without its key and is not retried. Returns the job or NULL.
CREATE OR REPLACE FUNCTION hopper.remove_job(job_key text)
RETURNS hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    removed hopper._jobs;
BEGIN
    PERFORM hopper._check_required('remove_job', 'job_key', job_key IS NULL);
    DELETE FROM hopper._jobs AS j
    WHERE j.key = job_key AND j.state IN ('waiting', 'scheduled', 'pending')
    RETURNING * INTO removed;
    IF removed.id IS NULL THEN
        UPDATE hopper._jobs AS j
        SET key = NULL, max_attempts = j.attempts, updated_at = now()
        WHERE j.key = job_key AND j.state = 'running'
        RETURNING * INTO removed;
    ELSE
        PERFORM hopper._cancel_dependents_of_removed(removed);
    END IF;
    IF removed.id IS NULL THEN
        -- no such job: NULL, not the record _present makes of an empty row
        -- (every field NULL but its derived state)
        RETURN NULL;
    END IF;
    RETURN hopper._present(removed);
END
$$;

-- Unlocks every job the given workers hold: runnable again at once; the
-- claim's attempt stays counted (graphile semantics), so a job with no
-- attempt left fails instead.
CREATE OR REPLACE FUNCTION hopper.force_unlock_workers(worker_ids text[])
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unlocked hopper._jobs[];
BEGIN
    PERFORM hopper._check_required('force_unlock_workers', 'worker_ids', worker_ids IS NULL);
    WITH target AS (
        UPDATE hopper._jobs AS j SET
            state = CASE
                WHEN j.attempts >= j.max_attempts THEN 'failed'
                WHEN j.run_at > now() THEN 'scheduled'
                ELSE 'pending'
            END,
            last_error = CASE
                WHEN j.attempts >= j.max_attempts
                    THEN format('unlocked from worker %s with no attempt left', j.locked_by)
                ELSE j.last_error
            END,
            finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
            locked_at = NULL,
            locked_by = NULL,
            updated_at = now()
        WHERE j.state = 'running' AND j.locked_by = any(worker_ids)
        RETURNING j.*
    )

    SELECT array_agg(t) INTO unlocked FROM target AS t;
    PERFORM hopper._release_queue_slots(ARRAY(SELECT u.queue_name FROM unnest(unlocked) AS u));
    PERFORM hopper._settle_dependents_of(unlocked);
    IF cardinality(unlocked) > 0 THEN
        PERFORM hopper._notify_jobs();
    END IF;
    RETURN QUERY
    SELECT p.* FROM unnest(unlocked) AS u
    CROSS JOIN LATERAL hopper._present(u) AS p
    ORDER BY p.id;
END
$$;

-- The job's public record, or NULL when no such job is retained.
CREATE OR REPLACE FUNCTION hopper.job_status(job_id bigint)
RETURNS hopper.jobs
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    record_out hopper.jobs;
BEGIN
    SELECT * INTO record_out FROM hopper.jobs AS j WHERE j.id = job_id;
    RETURN record_out;
END
$$;

-- Job counts per task and queue, by state, and how long the oldest pending
-- job has been due.
CREATE OR REPLACE FUNCTION hopper.queue_stats()
RETURNS TABLE (
    task_identifier text,
    queue_name text,
    waiting bigint,
    scheduled bigint,
    pending bigint,
    running bigint,
    completed bigint,
    failed bigint,
    cancelled bigint,
    oldest_pending_age interval
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    -- counted per state first: the view's state is then worked out once a
    -- job, not once per column (1,000,000 jobs kept: 240 against 121 ms)
    RETURN QUERY
    SELECT
        c.task_identifier,
        c.queue_name,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'waiting'), 0)::bigint,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'scheduled'), 0)::bigint,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'pending'), 0)::bigint,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'running'), 0)::bigint,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'completed'), 0)::bigint,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'failed'), 0)::bigint,
        coalesce(sum(c.n) FILTER (WHERE c.state = 'cancelled'), 0)::bigint,
        now() - min(c.oldest_run_at) FILTER (WHERE c.state = 'pending')
    FROM (
        SELECT j.task_identifier, j.queue_name, j.state, count(*) AS n, min(j.run_at) AS oldest_run_at
        FROM hopper.jobs AS j
        GROUP BY j.task_identifier, j.queue_name, j.state
    ) AS c
    GROUP BY c.task_identifier, c.queue_name
    ORDER BY c.task_identifier, c.queue_name NULLS FIRST;
END
$$;

-- Creates or changes a named queue; a NULL argument keeps the current value
-- (a new queue runs one job at a time and is not paused).
CREATE OR REPLACE FUNCTION hopper.set_queue(
    queue_name text, concurrency integer DEFAULT NULL, paused boolean DEFAULT NULL
) RETURNS hopper._queues
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text[] := hopper._text_problem('queue_name', queue_name, true, 128);
    queue hopper._queues;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM hopper._raise('set_queue', problem[1], problem[2]);
    END IF;
    IF concurrency < 1 THEN
        PERFORM hopper._raise('set_queue', '22023', format(
            'concurrency must be at least 1 (got %s)', concurrency
        ));
    END IF;
    INSERT INTO hopper._queues AS q (name, concurrency, paused)
    VALUES (queue_name, coalesce(concurrency, 1), coalesce(paused, false))
    ON CONFLICT (name) DO UPDATE SET
        concurrency = coalesce(set_queue.concurrency, q.concurrency),
        paused = coalesce(set_queue.paused, q.paused)
    RETURNING q.* INTO queue;
    -- more slots or an unpaused queue may make jobs claimable
    PERFORM hopper._notify_jobs();
    RETURN queue;
END
$$;

-- The finished_at bounds below which completed jobs, and failed or cancelled
-- ones, are past their retention; with older_than, both are now() - older_than.
CREATE OR REPLACE FUNCTION hopper._retention_bounds(
    fn text,
    older_than interval,
    OUT completed_before timestamptz,
    OUT failed_before timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF older_than < interval '0' THEN
        PERFORM hopper._raise(fn, '22023', format(
            'older_than must not be negative (got %s)', older_than
        ));
    END IF;
    completed_before := now() - coalesce(
        older_than, hopper._setting('completed_retention')::interval
    );
    failed_before := now() - coalesce(
        older_than, hopper._setting('failed_retention')::interval
    );
END
$$;

-- Deletes finished jobs past their retention (or, with older_than, every
-- finished job that finished before now() - older_than). Returns the count.
-- The bound on finished_at lets the delete read jobs_finished_at from its
-- oldest entry up to the bound, not every finished job that is kept.
CREATE OR REPLACE FUNCTION hopper.prune(older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bounds record;
    pruned bigint;
BEGIN
    bounds := hopper._retention_bounds('prune', older_than);
    -- finished_at is set exactly on finished jobs (jobs_state_consistent)
    DELETE FROM hopper._jobs AS j
    WHERE j.finished_at < greatest(bounds.completed_before, bounds.failed_before)
        AND j.finished_at < CASE j.state
            WHEN 'completed' THEN bounds.completed_before
            ELSE bounds.failed_before
        END;
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END
$$;

-- What workers call to apply the retention settings: deletes up to batch_size
-- finished jobs past their retention, oldest first, and returns the count. It
-- skips jobs another session holds, so workers pruning at once neither wait
-- for each other nor for a retry_jobs, and a backlog goes in short
-- transactions. It deletes nothing that prune() would keep, which is why a
-- worker may call it. A worker's session keeps its plan for good, and one made
-- while few jobs were kept must not read every finished job later: hence the
-- hot functions' settings.
CREATE OR REPLACE FUNCTION hopper.prune_expired(batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    bounds record;
    pruned bigint;
BEGIN
    PERFORM hopper._check_required('prune_expired', 'batch_size', batch_size IS NULL);
    IF batch_size < 1 THEN
        PERFORM hopper._raise('prune_expired', '22023', format(
            'batch_size must be at least 1 (got %s)', batch_size
        ));
    END IF;
    bounds := hopper._retention_bounds('prune_expired', NULL);
    DELETE FROM hopper._jobs AS j
    WHERE j.ctid = any(ARRAY(
        SELECT e.ctid FROM hopper._jobs AS e
        WHERE e.finished_at < greatest(bounds.completed_before, bounds.failed_before)
            AND e.finished_at < CASE e.state
                WHEN 'completed' THEN bounds.completed_before
                ELSE bounds.failed_before
            END
        ORDER BY e.finished_at
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    ));
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END
$$;

-- Records how far a running job is (0-100); only the worker holding it can.
-- Returns whether the job was updated.
CREATE OR REPLACE FUNCTION hopper.set_progress(
    worker_id text, job_id bigint, progress integer
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM hopper._check_worker_id('set_progress', worker_id);
    PERFORM hopper._check_required('set_progress', 'job_id', job_id IS NULL);
    IF progress NOT BETWEEN 0 AND 100 OR progress IS NULL THEN
        PERFORM hopper._raise('set_progress', '22023', format(
            'progress must be between 0 and 100 (got %s)', coalesce(progress::text, 'null')
        ));
    END IF;
    UPDATE hopper._jobs AS j SET progress = set_progress.progress, updated_at = now()
    WHERE j.id = job_id AND j.state = 'running' AND j.locked_by = worker_id;
    RETURN FOUND;
END
$$;
