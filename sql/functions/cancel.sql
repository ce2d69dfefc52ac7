-- Cancelling and retrying jobs (SPEC.md 4.5).

-- Cancels active jobs: at once when nobody holds them; a running job is asked
-- to cancel (cancel_requested, a notification on hopper_cancel and the reply
-- of its worker's heartbeat) and ends cancelled when its worker gives it up.
-- reason is stored as last_error. Returns the jobs it changed.
CREATE OR REPLACE FUNCTION hopper.cancel_jobs(job_ids bigint[], reason text DEFAULT NULL)
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed hopper._jobs[];
BEGIN
    PERFORM hopper._check_required('cancel_jobs', 'job_ids', job_ids IS NULL);
    WITH target AS (
        UPDATE hopper._jobs AS j SET
            state = CASE WHEN j.state = 'running' THEN 'running' ELSE 'cancelled' END,
            cancel_requested = j.state = 'running',
            finished_at = CASE WHEN j.state = 'running' THEN NULL ELSE now() END,
            last_error = coalesce(reason, 'cancelled'),
            updated_at = now()
        WHERE
            j.id = any(job_ids)
            AND j.state IN ('waiting', 'scheduled', 'pending', 'running')
            AND NOT j.cancel_requested
        RETURNING j.*
    )

    SELECT array_agg(t) INTO changed FROM target AS t;
    PERFORM hopper._settle_dependents_of(changed);
    PERFORM pg_notify('hopper_cancel', c.id::text)
    FROM unnest(changed) AS c
    WHERE c.state = 'running';
    RETURN QUERY
    SELECT p.* FROM unnest(changed) AS c
    CROSS JOIN LATERAL hopper._present(c) AS p
    ORDER BY p.id;
END
$$;

-- Makes failed or cancelled jobs runnable now with attempts reset. A job whose
-- key another active job holds now is skipped. A job with dependencies
-- waits for them again (and is cancelled again while one is failed); a call
-- that would leave a job waiting for itself through tag barriers made since
-- it ended is refused. No job waits on a finished one by id (its dependents
-- were cancelled with it), so only a barrier can lead back.
CREATE OR REPLACE FUNCTION hopper.retry_jobs(job_ids bigint[])
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    retried_ids bigint[];
    held bigint[];
    locked record;
    cyclic bigint;
BEGIN
    PERFORM hopper._check_required('retry_jobs', 'job_ids', job_ids IS NULL);
    PERFORM hopper._lock_barrier_tags(
        ARRAY(
            SELECT DISTINCT t.tag FROM hopper._jobs AS j CROSS JOIN LATERAL unnest(j.tags) AS t (tag)
            WHERE
                j.id = any(job_ids) AND j.state IN ('failed', 'cancelled')
                AND (j.depends_on IS NOT NULL OR j.depends_on_tags IS NOT NULL)
        ),
        ARRAY(
            SELECT DISTINCT t.tag
            FROM hopper._jobs AS j CROSS JOIN LATERAL unnest(j.depends_on_tags) AS t (tag)
            WHERE j.id = any(job_ids) AND j.state IN ('failed', 'cancelled')
        )
    );
    FOR attempt IN 1..3 LOOP
        BEGIN
            WITH retried AS (
                UPDATE hopper._jobs AS j SET
                    state = CASE
                        WHEN j.depends_on IS NOT NULL OR j.depends_on_tags IS NOT NULL
                            THEN 'waiting'
                        ELSE 'pending'
                    END,
                    run_at = now(),
                    attempts = 0,
                    finished_at = NULL,
                    cancel_requested = false,
                    revision = j.revision + 1,
                    updated_at = now()
                WHERE
                    j.id = any(job_ids) AND j.state IN ('failed', 'cancelled')
                    AND NOT EXISTS (
                        SELECT FROM hopper._jobs AS holder
                        WHERE holder.key = j.key AND holder.id <> j.id
                            AND holder.state IN ('waiting', 'scheduled', 'pending', 'running')
                    )
                    -- of the call's jobs of one key, the newest takes it
                    AND NOT EXISTS (
                        SELECT FROM hopper._jobs AS twin
                        WHERE twin.key = j.key AND twin.id > j.id AND twin.id = any(job_ids)
                            AND twin.state IN ('failed', 'cancelled')
                    )
                RETURNING j.id, j.state
            )

            SELECT
                array_agg(r.id),
                array_agg(r.id ORDER BY r.id) FILTER (WHERE r.state = 'waiting')
            INTO retried_ids, held
            FROM retried AS r;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            -- a job of the same key became active since the test above read, and
            -- has committed (the index waited for it): the next try leaves ours
            IF attempt = 3 THEN
                PERFORM hopper._raise('retry_jobs', '40001',
                    'the job keys of these jobs kept changing under us, try again');
            END IF;
        END;
    END LOOP;
    IF held IS NOT NULL THEN
        cyclic := hopper._cycle_origin(held, held);
        IF cyclic IS NOT NULL THEN
            PERFORM hopper._raise('retry_jobs', '22023', format(
                'tags make a dependency cycle: job %s would wait for itself'
                ' through a tag barrier', cyclic
            ));
        END IF;
        -- a prerequisite pruned since counts as completed
        locked := hopper._lock_prerequisites(held);
        PERFORM hopper._settle_held(held, locked.holders);
    END IF;
    IF retried_ids IS NOT NULL THEN
        PERFORM hopper._notify_jobs();
    END IF;
    RETURN QUERY SELECT v.* FROM hopper.jobs AS v WHERE v.id = any(retried_ids) ORDER BY v.id;
END
$$;
