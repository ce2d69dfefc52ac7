-- Workers, heartbeats and rescue (SPEC.md 4.3). A registered worker owns its
-- locks while it heartbeats; rescue_stale_jobs retires a silent worker's id
-- and fails its jobs, so the lock owner is the fencing token.

CREATE OR REPLACE FUNCTION hopper._check_not_retired(fn text, worker_id text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (
        SELECT FROM hopper._workers AS w
        WHERE w.id = worker_id AND w.retired_at IS NOT NULL
    ) THEN
        PERFORM hopper._raise(fn, '55000', format(
            'worker %s was retired (its jobs were rescued or it unregistered): '
            'register again under a new id', worker_id
        ));
    END IF;
END
$$;

-- Registers worker_id (again: refreshes its heartbeat and metadata).
CREATE OR REPLACE FUNCTION hopper.register_worker(
    worker_id text, metadata jsonb DEFAULT '{}'
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_worker_id('register_worker', worker_id);
    PERFORM hopper._check_not_retired('register_worker', worker_id);
    INSERT INTO hopper._workers AS w (id, metadata)
    VALUES (worker_id, coalesce(metadata, '{}'))
    ON CONFLICT (id) DO UPDATE
    SET last_heartbeat_at = now(), metadata = excluded.metadata
    WHERE w.retired_at IS NULL;
    IF NOT FOUND THEN
        PERFORM hopper._check_not_retired('register_worker', worker_id);
    END IF;
END
$$;

-- Records that worker_id is alive; returns the ids of its running jobs that
-- were asked to cancel. A retired or unknown id raises 55000.
CREATE OR REPLACE FUNCTION hopper.heartbeat(worker_id text)
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM hopper._check_worker_id('heartbeat', worker_id);
    -- the row lock orders us against rescue: once it retires us, we fail here
    UPDATE hopper._workers AS w SET last_heartbeat_at = now()
    WHERE w.id = worker_id AND w.retired_at IS NULL;
    IF NOT FOUND THEN
        PERFORM hopper._check_not_retired('heartbeat', worker_id);
        PERFORM hopper._raise('heartbeat', '55000', format(
            'worker %s is not registered: call register_worker first', worker_id
        ));
    END IF;
    RETURN ARRAY(
        SELECT j.id FROM hopper._jobs AS j
        WHERE j.state = 'running' AND j.locked_by = worker_id AND j.cancel_requested
        ORDER BY j.id
    );
END
$$;

-- Releases what worker_id still holds (no attempt counted) and retires the id.
CREATE OR REPLACE FUNCTION hopper.unregister_worker(worker_id text)
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_worker_id('unregister_worker', worker_id);
    INSERT INTO hopper._workers AS w (id, retired_at) VALUES (worker_id, now())
    ON CONFLICT (id) DO UPDATE SET retired_at = coalesce(w.retired_at, now());
    -- every job it holds: it keeps none
    RETURN QUERY SELECT * FROM hopper.release_unknown_jobs(worker_id, '{}');
END
$$;

-- Releases (no attempt counted) the jobs worker_id holds but does not know of:
-- those of a claim that committed while its reply was lost (the connection
-- failed), which would otherwise stay running while the worker heartbeats.
-- kept_job_ids are the jobs the worker runs or still reports. Returns the jobs.
CREATE OR REPLACE FUNCTION hopper.release_unknown_jobs(worker_id text, kept_job_ids bigint[])
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- every worker calls it every heartbeat interval: see "Settings of the hot entry
-- points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM hopper._check_worker_id('release_unknown_jobs', worker_id);
    PERFORM hopper._check_required('release_unknown_jobs', 'kept_job_ids', kept_job_ids IS NULL);
    RETURN QUERY SELECT * FROM hopper.release_jobs(
        worker_id,
        ARRAY(
            SELECT j.id FROM hopper._jobs AS j
            WHERE
                j.state = 'running' AND j.locked_by = worker_id
                AND NOT j.id = any(kept_job_ids)
        )
    );
END
$$;

-- Retires registered workers whose last heartbeat is older than stale_after
-- and fails their jobs ("worker <id> lost", retried at once); fails jobs held
-- longer than their timeout plus timeout_grace ("timeout after <interval>")
-- without retiring their worker. Safe to run concurrently; returns the jobs.
CREATE OR REPLACE FUNCTION hopper.rescue_stale_jobs(
    stale_after interval DEFAULT '30 seconds', now timestamptz DEFAULT now()
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    grace interval := hopper._setting('timeout_grace')::interval;
    lost hopper._jobs[];
    overdue hopper._jobs[];
BEGIN
    PERFORM hopper._check_required('rescue_stale_jobs', 'stale_after', stale_after IS NULL);
    PERFORM hopper._check_required('rescue_stale_jobs', 'now', rescue_stale_jobs.now IS NULL);
    IF stale_after < interval '0' THEN
        PERFORM hopper._raise('rescue_stale_jobs', '22023', format(
            'stale_after must not be negative (got %s)', stale_after
        ));
    END IF;
    -- the update re-reads each worker row under its lock, so a heartbeat that
    -- committed after our snapshot keeps its worker alive
    UPDATE hopper._workers AS w SET retired_at = rescue_stale_jobs.now
    WHERE w.retired_at IS NULL AND w.last_heartbeat_at < rescue_stale_jobs.now - stale_after;

    lost := ARRAY(
        SELECT j FROM hopper._jobs AS j
        WHERE j.state = 'running' AND j.locked_by IN (
            SELECT w.id FROM hopper._workers AS w WHERE w.retired_at IS NOT NULL
        )
        ORDER BY j.id
        FOR UPDATE OF j SKIP LOCKED
    );
    overdue := ARRAY(
        SELECT j FROM hopper._jobs AS j
        WHERE j.state = 'running' AND j.timeout IS NOT NULL
            AND j.locked_at < rescue_stale_jobs.now - j.timeout - grace
            AND NOT j.id = any(ARRAY(SELECT l.id FROM unnest(lost) AS l))
        ORDER BY j.id
        FOR UPDATE OF j SKIP LOCKED
    );
    RETURN QUERY
    SELECT p.*
    FROM hopper._fail_running(
        ARRAY(SELECT l.id FROM unnest(lost) AS l UNION ALL SELECT o.id FROM unnest(overdue) AS o),
        ARRAY(
            SELECT format('worker %s lost', l.locked_by) FROM unnest(lost) AS l
            UNION ALL
            SELECT format('timeout after %s', o.timeout) FROM unnest(overdue) AS o
        ),
        NULL, NULL, rescue_stale_jobs.now
    ) AS f
    CROSS JOIN LATERAL hopper._present(f) AS p
    ORDER BY p.id;
END
$$;
