-- Failing jobs: retries with backoff, permanent failure, dead letters
-- (SPEC.md 4.2) and the admin permanently_fail_jobs (4.5).

CREATE OR REPLACE FUNCTION hopper._dead_letter_payload(j hopper._jobs)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN jsonb_build_object(
        'job', jsonb_build_object(
            'id', j.id,
            'task_identifier', j.task_identifier,
            'queue_name', j.queue_name,
            'key', j.key,
            'tags', j.tags,
            'attempts', j.attempts,
            'max_attempts', j.max_attempts,
            'errors', j.errors
        ),
        'payload', j.payload,
        'error', j.last_error
    );
END
$$;

-- For each failed job with a dead_letter task, adds a job of that task and
-- links it. Returns every given job, linked where it applies.
CREATE OR REPLACE FUNCTION hopper._send_dead_letters(finished hopper._jobs[])
RETURNS SETOF hopper._jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    letters hopper.job_spec[] := ARRAY(
        SELECT ROW(
            f.dead_letter, hopper._dead_letter_payload(f),
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL
        )::hopper.job_spec
        FROM unnest(finished) AS f
        WHERE f.state = 'failed' AND f.dead_letter IS NOT NULL
        ORDER BY f.id
    );
BEGIN
    IF cardinality(letters) = 0 THEN
        RETURN QUERY SELECT * FROM unnest(finished);
        RETURN;
    END IF;
    RETURN QUERY
    WITH sent AS (
        SELECT l.id, (l.payload -> 'job' ->> 'id')::bigint AS source_id
        FROM hopper._insert_jobs(letters) AS l
    ),

    linked AS (
        UPDATE hopper._jobs AS j SET dead_letter_job_id = s.id
        FROM sent AS s
        WHERE j.id = s.source_id
        RETURNING j.*
    )

    SELECT f.* FROM unnest(finished) AS f
    WHERE NOT EXISTS (SELECT FROM linked AS l WHERE l.id = f.id)
    UNION ALL
    SELECT * FROM linked;
    PERFORM hopper._notify_jobs();
END
$$;

-- Records a failed attempt of running jobs (all of them, or only those owner
-- holds). A job with attempts left is retried at retry_at, or after its
-- backoff when retry_at is NULL; otherwise, or when permanent, it fails for
-- good. A job asked to cancel ends cancelled. Frees the jobs' queue slots.
CREATE OR REPLACE FUNCTION hopper._fail_running(
    job_ids bigint[],
    error_messages text[],
    replacement_payloads jsonb[],
    owner text,
    retry_at timestamptz,
    permanent boolean DEFAULT false
) RETURNS SETOF hopper._jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed hopper._jobs[];
BEGIN
    -- Unlike completion, the outcome is computed from the row (attempts, a
    -- cancel request that may arrive meanwhile), so lock it before reading.
    WITH attempt AS (
        SELECT
            j.id,
            i.message,
            i.replacement,
            CASE
                WHEN j.cancel_requested THEN 'cancelled'
                WHEN permanent OR j.attempts >= j.max_attempts THEN 'failed'
                ELSE 'retry'
            END AS verdict,
            coalesce(retry_at, now() + hopper._backoff(
                j.backoff, j.backoff_delay, j.backoff_max, j.attempts
            )) AS next_run_at
        FROM hopper._jobs AS j
        INNER JOIN unnest(job_ids, error_messages, replacement_payloads)
            AS i (id, message, replacement) ON j.id = i.id
        WHERE
            j.id = any(job_ids) AND j.state = 'running'
            AND (owner IS NULL OR j.locked_by = owner)
        FOR UPDATE OF j
    ),

    failed AS (
        UPDATE hopper._jobs AS j SET
            state = CASE
                WHEN a.verdict <> 'retry' THEN a.verdict
                WHEN a.next_run_at > now() THEN 'scheduled'
                ELSE 'pending'
            END,
            run_at = CASE WHEN a.verdict = 'retry' THEN a.next_run_at ELSE j.run_at END,
            last_error = CASE
                WHEN a.verdict = 'cancelled' THEN coalesce(j.last_error, 'cancelled')
                ELSE a.message
            END,
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                'attempt', j.attempts, 'at', now(), 'message', a.message
            )),
            payload = coalesce(a.replacement, j.payload),
            locked_at = NULL,
            locked_by = NULL,
            finished_at = CASE WHEN a.verdict = 'retry' THEN NULL ELSE now() END,
            updated_at = now()
        FROM attempt AS a
        WHERE j.id = a.id
        RETURNING j.*
    )

    SELECT array_agg(f) INTO changed FROM failed AS f;
    PERFORM hopper._release_queue_slots(ARRAY(SELECT c.queue_name FROM unnest(changed) AS c));
    PERFORM hopper._settle_dependents_of(changed);
    IF EXISTS (SELECT FROM unnest(changed) AS c WHERE c.state = 'pending') THEN
        PERFORM hopper._notify_jobs();
    END IF;
    RETURN QUERY SELECT * FROM hopper._send_dead_letters(changed);
END
$$;

-- Fails one job held by worker_id (SPEC.md 4.2); permanent fails it for good
-- whatever attempts are left (retrying cannot fix it). Returns the job, or
-- NULL when worker_id does not hold it (nothing changes then).
CREATE OR REPLACE FUNCTION hopper.fail_job(
    worker_id text,
    job_id bigint,
    error_message text,
    replacement_payload jsonb DEFAULT NULL,
    permanent boolean DEFAULT false
) RETURNS hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    failed hopper.jobs;
BEGIN
    PERFORM hopper._check_worker_id('fail_job', worker_id);
    PERFORM hopper._check_required('fail_job', 'job_id', job_id IS NULL);
    SELECT p.* INTO failed
    FROM hopper._fail_running(
        ARRAY[job_id], ARRAY[error_message], ARRAY[replacement_payload],
        worker_id, NULL, coalesce(permanent, false)
    ) AS f
    CROSS JOIN LATERAL hopper._present(f) AS p;
    RETURN failed;
END
$$;

-- The batch form of fail_job: returns the jobs it changed.
CREATE OR REPLACE FUNCTION hopper.fail_claimed_jobs(
    worker_id text,
    job_ids bigint[],
    error_messages text[],
    replacement_payloads jsonb[] DEFAULT NULL,
    permanent boolean DEFAULT false
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM hopper._check_worker_id('fail_claimed_jobs', worker_id);
    PERFORM hopper._check_required('fail_claimed_jobs', 'job_ids', job_ids IS NULL);
    PERFORM hopper._check_batch_size('fail_claimed_jobs', 'job_ids', cardinality(job_ids));
    PERFORM hopper._check_same_length(
        'fail_claimed_jobs', 'error_messages',
        cardinality(error_messages), cardinality(job_ids)
    );
    IF replacement_payloads IS NOT NULL THEN
        PERFORM hopper._check_same_length(
            'fail_claimed_jobs', 'replacement_payloads',
            cardinality(replacement_payloads), cardinality(job_ids)
        );
    END IF;
    RETURN QUERY
    SELECT p.*
    FROM hopper._fail_running(
        job_ids, error_messages, replacement_payloads, worker_id, NULL,
        coalesce(permanent, false)
    ) AS f
    CROSS JOIN LATERAL hopper._present(f) AS p
    ORDER BY p.id;
END
$$;

-- Admin (graphile-compatible): fails active jobs nobody holds, for good.
CREATE OR REPLACE FUNCTION hopper.permanently_fail_jobs(
    job_ids bigint[], error_message text DEFAULT NULL
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    failed hopper._jobs[];
BEGIN
    PERFORM hopper._check_required('permanently_fail_jobs', 'job_ids', job_ids IS NULL);
    WITH target AS (
        UPDATE hopper._jobs AS j SET
            state = 'failed',
            last_error = coalesce(error_message, 'permanently failed'),
            finished_at = now(),
            updated_at = now()
        WHERE j.id = any(job_ids) AND j.state IN ('waiting', 'scheduled', 'pending')
        RETURNING j.*
    )

    SELECT array_agg(t) INTO failed FROM target AS t;
    PERFORM hopper._settle_dependents_of(failed);
    RETURN QUERY
    SELECT p.*
    FROM hopper._send_dead_letters(failed) AS f
    CROSS JOIN LATERAL hopper._present(f) AS p
    ORDER BY p.id;
END
$$;
