-- Claiming jobs (SPEC.md 4.1).

-- Fails the expired jobs (locked by get_jobs): locks of workers that never
-- registered (plain SQL consumers that died) count the attempt as failed and
-- run again at once. Registered workers' locks end only through
-- rescue_stale_jobs.
CREATE OR REPLACE FUNCTION hopper._expire_locks(
    expired hopper._jobs[], retry_at timestamptz, job_expiry interval
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._fail_running(
        ARRAY(SELECT e.id FROM unnest(expired) AS e),
        ARRAY(
            SELECT format('lock of worker %s expired after %s', e.locked_by, job_expiry)
            FROM unnest(expired) AS e
        ),
        NULL, NULL, retry_at
    );
END
$$;

-- jobs_pending_by_task orders pending jobs by their task's key, a 4-byte
-- hash of its name, rather than by the name: comparing names cost a tenth of
-- a bulk insert. Tasks whose names collide share a key, and so a range of
-- the index; a claim of named tasks tells them apart by name (task_names),
-- a claim of any task (task_names NULL) needs not.

-- How many of the first batch_size claimable jobs in claim order each task
-- key has (one count per key, in the order of task_keys), from the first
-- depths[i] claimable jobs of each, read without locking.
CREATE OR REPLACE FUNCTION hopper._count_shares(
    task_keys integer[],
    depths integer[],
    batch_size integer,
    task_names text[],
    forbidden_flags text[],
    claim_time timestamptz
) RETURNS integer[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(
        SELECT count(first_jobs.task_key)::integer
        FROM unnest(task_keys) WITH ORDINALITY AS task (task_key, n)
        LEFT JOIN (
            SELECT candidate.task_key
            FROM unnest(task_keys, depths) AS one (task_key, depth)
            CROSS JOIN LATERAL (
                SELECT one.task_key, j.priority, j.run_at, j.id
                FROM hopper._claimable_jobs AS j
                WHERE
                    hashtext(j.task_identifier) = one.task_key
                    AND (task_names IS NULL OR j.task_identifier = any(task_names))
                    AND j.run_at <= claim_time
                    AND (forbidden_flags IS NULL OR j.flags IS NULL OR NOT j.flags && forbidden_flags)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT one.depth
            ) AS candidate
            ORDER BY candidate.priority, candidate.run_at, candidate.id
            LIMIT batch_size
        ) AS first_jobs ON task.task_key = first_jobs.task_key
        GROUP BY task.n
        ORDER BY task.n
    );
END
$$;

-- The share of a batch of each of task_keys (several, each with a claimable
-- job). It first reads twice a fair share of each key's jobs. A key none of
-- whose jobs read fell outside the batch may have more in it: only those
-- are read again, to the batch size. (The others keep their counts: more
-- jobs of other keys can only push theirs out.)
CREATE OR REPLACE FUNCTION hopper._batch_shares(
    task_keys integer[],
    batch_size integer,
    task_names text[],
    forbidden_flags text[],
    claim_time timestamptz
) RETURNS integer[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    depth integer := least(
        batch_size, 2 * ((batch_size + cardinality(task_keys) - 1) / cardinality(task_keys))
    );
    shares integer[] := hopper._count_shares(
        task_keys, array_fill(depth, ARRAY[cardinality(task_keys)]), batch_size,
        task_names, forbidden_flags, claim_time
    );
BEGIN
    IF depth < batch_size AND depth = any(shares) THEN
        shares := hopper._count_shares(
            task_keys,
            ARRAY(
                SELECT CASE WHEN s.share = depth THEN batch_size ELSE depth END
                FROM unnest(shares) WITH ORDINALITY AS s (share, n)
                ORDER BY s.n
            ),
            batch_size, task_names, forbidden_flags, claim_time
        );
    END IF;
    RETURN shares;
END
$$;

-- Of the locked candidates, the ids a batch may take: no more jobs of a
-- named queue than it has free slots, which it takes (queue.running grows).
CREATE OR REPLACE FUNCTION hopper._within_queue_limits(candidate_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen_ids bigint[];
BEGIN
    WITH candidate AS MATERIALIZED (
        SELECT j.id, j.queue_name, j.priority, j.run_at
        FROM hopper._jobs AS j
        WHERE j.id = any(candidate_ids)
    ),

    -- Lock only the queues of the candidates. A queue row another claimer
    -- holds is skipped; a locked row is re-read, so free_slots is current.
    open_queue AS MATERIALIZED (
        SELECT q.name, q.concurrency - q.running AS free_slots
        FROM hopper._queues AS q
        WHERE
            q.name IN (SELECT c.queue_name FROM candidate AS c)
            AND NOT q.paused AND q.running < q.concurrency
        FOR UPDATE OF q SKIP LOCKED
    ),

    chosen AS MATERIALIZED (
        SELECT ranked.id, ranked.queue_name
        FROM (
            SELECT
                c.id,
                c.queue_name,
                row_number() OVER (
                    PARTITION BY c.queue_name ORDER BY c.priority, c.run_at, c.id
                ) AS queue_rank
            FROM candidate AS c
        ) AS ranked
        LEFT JOIN open_queue AS oq ON ranked.queue_name = oq.name
        WHERE ranked.queue_name IS NULL OR ranked.queue_rank <= oq.free_slots
    ),

    taken_slots AS (
        UPDATE hopper._queues AS q SET running = q.running + t.slots
        FROM (
            SELECT ch.queue_name, count(*) AS slots FROM chosen AS ch
            WHERE ch.queue_name IS NOT NULL
            GROUP BY ch.queue_name
        ) AS t
        WHERE q.name = t.queue_name
    )

    SELECT array_agg(ch.id) INTO chosen_ids FROM chosen AS ch;
    RETURN chosen_ids;
END
$$;

-- Marks running up to batch_size claimable jobs in claim order; returns
-- their ids. Each task key's range of jobs_pending_by_task is walked for its
-- share of the batch (_batch_shares), so a claim locks no more jobs than it
-- takes; only when other claimers held jobs of those shares does a second
-- pass look for the rest under every key with work. A claim of any task
-- walks every key that has pending jobs: no index holds all pending jobs in
-- claim order (it cost a fifth of an insert). Statements rather than calls
-- of helpers wherever a claim of one job passes: each call costs a claim
-- made after an idle pause about 60 us.
CREATE OR REPLACE FUNCTION hopper._claim(
    worker_id text,
    task_identifiers text[],
    batch_size integer,
    forbidden_flags text[],
    claim_time timestamptz
) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    task_keys integer[];
    shares integer[] := ARRAY[batch_size];
    wanted integer := batch_size;
    walk_keys integer[];
    limits integer[];
    taken integer;
    candidate_ids bigint[];
    any_queue boolean;
    row_ids tid[];
    chosen_ids bigint[];
    claimed_ids bigint[];
BEGIN
    IF task_identifiers IS NULL THEN
        -- the keys of the tasks that have pending jobs, in one descent of
        -- jobs_pending_by_task per key (a skip scan)
        task_keys := ARRAY(
            WITH RECURSIVE task (task_key) AS (
                SELECT min(hashtext(j.task_identifier)) FROM hopper._jobs AS j
                WHERE j.state = 'pending'
                UNION ALL
                SELECT (
                    SELECT min(hashtext(j.task_identifier)) FROM hopper._jobs AS j
                    WHERE j.state = 'pending' AND hashtext(j.task_identifier) > task.task_key
                )
                FROM task
                WHERE task.task_key IS NOT NULL
            )

            SELECT task.task_key FROM task WHERE task.task_key IS NOT NULL
        );
    END IF;
    IF task_identifiers IS NOT NULL OR cardinality(task_keys) > 1 THEN
        -- those that have a claimable job (jobs other claimers hold count),
        -- in the order of their first ones: one probe of jobs_pending_by_task
        -- each. Only the first batch_size can have jobs among the first
        -- batch_size.
        task_keys := ARRAY(
            SELECT task.task_key
            FROM unnest(coalesce(
                task_keys,
                ARRAY(SELECT DISTINCT hashtext(t.name) FROM unnest(task_identifiers) AS t (name))
            )) AS task (task_key)
            CROSS JOIN LATERAL (
                SELECT j.priority, j.run_at, j.id
                FROM hopper._claimable_jobs AS j
                WHERE
                    hashtext(j.task_identifier) = task.task_key
                    AND (task_identifiers IS NULL OR j.task_identifier = any(task_identifiers))
                    AND j.run_at <= claim_time
                    AND (forbidden_flags IS NULL OR j.flags IS NULL OR NOT j.flags && forbidden_flags)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT 1
            ) AS first_job
            ORDER BY first_job.priority, first_job.run_at, first_job.id
        );
    END IF;
    IF cardinality(task_keys) = 0 THEN
        RETURN '{}';
    END IF;
    -- when a single task key has work (the common case), it takes the whole batch
    IF cardinality(task_keys) > 1 THEN
        shares := hopper._batch_shares(
            task_keys[1:batch_size], batch_size, task_identifiers, forbidden_flags, claim_time
        );
        wanted := (SELECT sum(s.share) FROM unnest(shares) AS s (share));
    END IF;
    -- The walk: under each key, its share in claim order. When other
    -- claimers held jobs of the shares (it locked fewer than they add up
    -- to), a second pass walks every key with work for what the batch still
    -- lacks and keeps the first of what it locks; the others stay locked
    -- until the claim commits.
    walk_keys := task_keys[1:batch_size];
    limits := shares;
    FOR pass IN 1..2 LOOP
        SELECT
            nullif(coalesce(candidate_ids, '{}') || array_agg(r.id), '{}'),
            coalesce(any_queue, false) OR coalesce(bool_or(r.queue_name IS NOT NULL), false),
            coalesce(row_ids, '{}') || array_agg(r.row_id)
        INTO candidate_ids, any_queue, row_ids
        FROM (
            SELECT c.id, c.row_id, c.queue_name
            FROM unnest(walk_keys, limits) AS task (task_key, max_jobs)
            CROSS JOIN LATERAL (
                SELECT j.id, j.row_id, j.queue_name, j.priority, j.run_at
                FROM hopper._claimable_jobs AS j
                WHERE
                    hashtext(j.task_identifier) = task.task_key
                    AND (task_identifiers IS NULL OR j.task_identifier = any(task_identifiers))
                    AND j.run_at <= claim_time
                    AND (forbidden_flags IS NULL OR j.flags IS NULL OR NOT j.flags && forbidden_flags)
                    AND j.id <> ALL(coalesce(candidate_ids, '{}'))
                ORDER BY j.priority, j.run_at, j.id
                LIMIT task.max_jobs
                FOR UPDATE OF j SKIP LOCKED
            ) AS c
            WHERE task.max_jobs > 0
            ORDER BY c.priority, c.run_at, c.id
            LIMIT batch_size - coalesce(cardinality(candidate_ids), 0)
        ) AS r;
        taken := coalesce(cardinality(candidate_ids), 0);
        EXIT WHEN pass = 2 OR cardinality(task_keys) = 1 OR taken >= wanted;
        walk_keys := task_keys;
        limits := array_fill(batch_size - taken, ARRAY[cardinality(task_keys)]);
    END LOOP;
    IF candidate_ids IS NULL THEN
        RETURN '{}';
    END IF;
    IF any_queue THEN
        chosen_ids := hopper._within_queue_limits(candidate_ids);
        row_ids := ARRAY(
            SELECT u.row_id FROM unnest(candidate_ids, row_ids) AS u (id, row_id)
            WHERE u.id = any(chosen_ids)
        );
    END IF;
    WITH claimed AS (
        UPDATE hopper._jobs AS j SET
            state = 'running',
            locked_at = claim_time,
            locked_by = worker_id,
            attempts = j.attempts + 1,
            started_at = coalesce(j.started_at, claim_time),
            updated_at = now()
        -- the versions we hold locked: a TID scan, no index descent
        WHERE j.ctid = any(row_ids)
        RETURNING j.id
    )

    SELECT array_agg(c.id) INTO claimed_ids FROM claimed AS c;
    RETURN coalesce(claimed_ids, '{}');
END
$$;

-- The full checks of get_jobs' arguments, raising the first problem.
CREATE OR REPLACE FUNCTION hopper._check_claim_arguments(
    worker_id text,
    task_identifiers text[],
    batch_size integer,
    forbidden_flags text[],
    job_expiry interval,
    claim_time timestamptz
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_worker_id('get_jobs', worker_id);
    PERFORM hopper._check_not_retired('get_jobs', worker_id);
    PERFORM hopper._check_required('get_jobs', 'batch_size', batch_size IS NULL);
    PERFORM hopper._check_required('get_jobs', 'job_expiry', job_expiry IS NULL);
    PERFORM hopper._check_required('get_jobs', 'now', claim_time IS NULL);
    IF batch_size < 1 THEN
        PERFORM hopper._raise('get_jobs', '22023', format(
            'batch_size must be at least 1 (got %s)', batch_size
        ));
    END IF;
    IF batch_size > hopper._setting('max_batch_size')::integer THEN
        PERFORM hopper._raise('get_jobs', '54000', format(
            'batch_size %s is more than max_batch_size (%s)',
            batch_size, hopper._setting('max_batch_size')
        ));
    END IF;
    IF job_expiry <= interval '0' THEN
        PERFORM hopper._raise('get_jobs', '22023', format(
            'job_expiry must be positive (got %s)', job_expiry
        ));
    END IF;
    -- a null matches nothing, so such a list was taken for its other elements
    IF array_position(task_identifiers, NULL) IS NOT NULL THEN
        PERFORM hopper._raise('get_jobs', '22004', 'task_identifiers must not contain null');
    END IF;
    IF array_position(forbidden_flags, NULL) IS NOT NULL THEN
        PERFORM hopper._raise('get_jobs', '22004', 'forbidden_flags must not contain null');
    END IF;
END
$$;

-- Claims up to batch_size runnable jobs for worker_id, in the order
-- priority, run_at, id. Concurrent callers never receive the same job.
CREATE OR REPLACE FUNCTION hopper.get_jobs(
    worker_id text,
    task_identifiers text[] DEFAULT NULL,
    batch_size integer DEFAULT 1,
    forbidden_flags text[] DEFAULT NULL,
    job_expiry interval DEFAULT '4 hours',
    now timestamptz DEFAULT now()
) RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    arguments_hold boolean;
    expired hopper._jobs[];
    any_due boolean;
    was_waiting boolean;
    claimed_ids bigint[];
    came_up_short boolean;
BEGIN
    -- In one statement: what every check requires; the jobs locked longer
    -- than job_expiry by workers that never registered (one probe of
    -- jobs_running_locked_at); whether a scheduled job is due (one of
    -- jobs_scheduled_run_at); the worker's waiting flag. Only a call failing
    -- the test runs the checks that say which argument is wrong (its locks
    -- end with the error), and each UPDATE below runs only when it has rows
    -- to change: even an UPDATE of no rows opens every index of its table.
    SELECT
        coalesce(
            worker_id !~ '^\s*$' AND length(worker_id) <= 128
            AND batch_size >= 1 AND job_expiry > interval '0' AND get_jobs.now IS NOT NULL
            AND array_position(task_identifiers, NULL) IS NULL
            AND array_position(forbidden_flags, NULL) IS NULL
            AND batch_size <= (
                SELECT s.value::integer FROM hopper.settings AS s WHERE s.name = 'max_batch_size'
            )
            AND NOT EXISTS (
                SELECT FROM hopper._workers AS w
                WHERE w.id = worker_id AND w.retired_at IS NOT NULL
            ),
            false
        ),
        ARRAY(
            SELECT j FROM hopper._jobs AS j
            WHERE j.state = 'running' AND j.locked_at < get_jobs.now - job_expiry
                AND NOT EXISTS (SELECT FROM hopper._workers AS holder WHERE holder.id = j.locked_by)
            ORDER BY j.id
            FOR UPDATE SKIP LOCKED
        ),
        EXISTS (
            SELECT FROM hopper._jobs AS d
            WHERE d.state = 'scheduled' AND d.run_at <= get_jobs.now
        ),
        (SELECT w.waiting FROM hopper._workers AS w WHERE w.id = worker_id)
    INTO arguments_hold, expired, any_due, was_waiting;
    IF NOT arguments_hold THEN
        PERFORM hopper._check_claim_arguments(
            worker_id, task_identifiers, batch_size, forbidden_flags, job_expiry, get_jobs.now
        );
    END IF;
    IF cardinality(expired) > 0 THEN
        PERFORM hopper._expire_locks(expired, get_jobs.now, job_expiry);
        -- their retries run at the claim's now, which may be ahead of the
        -- clock (stored 'scheduled'): due now
        any_due := true;
    END IF;
    IF any_due THEN
        -- due scheduled jobs become claimable; an id array (not IN) keeps the
        -- update on the primary key whatever the planner guesses about how
        -- many are due
        UPDATE hopper._jobs AS j SET state = 'pending'
        WHERE j.id = any(ARRAY(
            SELECT d.id FROM hopper._jobs AS d
            WHERE d.state = 'scheduled' AND d.run_at <= get_jobs.now
            FOR UPDATE SKIP LOCKED
        ));
    END IF;
    claimed_ids := hopper._claim(
        worker_id, task_identifiers, batch_size, forbidden_flags, get_jobs.now
    );
    -- a claim that comes up short waits for a notification; the flag is
    -- written only on a change, so a busy (or idle) worker writes nothing
    came_up_short := cardinality(claimed_ids) < batch_size;
    IF was_waiting <> came_up_short THEN
        UPDATE hopper._workers AS w SET waiting = came_up_short
        WHERE w.id = worker_id AND w.waiting <> came_up_short;
    END IF;
    -- read back through the view: cheaper per row than building each record
    RETURN QUERY
    SELECT v.* FROM hopper.jobs AS v
    WHERE v.id = any(claimed_ids)
    ORDER BY v.priority, v.run_at, v.id;
END
$$;

-- get_jobs with a batch of one: the claimed job, or NULL.
CREATE OR REPLACE FUNCTION hopper.get_job(
    worker_id text,
    task_identifiers text[] DEFAULT NULL,
    forbidden_flags text[] DEFAULT NULL,
    job_expiry interval DEFAULT '4 hours',
    now timestamptz DEFAULT now()
) RETURNS hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    record_out hopper.jobs;
BEGIN
    SELECT * INTO record_out FROM hopper.get_jobs(
        worker_id, task_identifiers, 1, forbidden_flags, job_expiry, now
    );
    RETURN record_out;
END
$$;

-- Gives back jobs worker_id holds and will not run (graceful shutdown):
-- runnable again at once and the claim's attempt is not counted. A job that
-- was asked to cancel ends cancelled instead. Returns the jobs it changed.
CREATE OR REPLACE FUNCTION hopper.release_jobs(worker_id text, job_ids bigint[])
RETURNS SETOF hopper.jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    released hopper._jobs[];
BEGIN
    PERFORM hopper._check_worker_id('release_jobs', worker_id);
    PERFORM hopper._check_required('release_jobs', 'job_ids', job_ids IS NULL);
    WITH target AS (
        UPDATE hopper._jobs AS j SET
            state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'pending' END,
            last_error = CASE
                WHEN j.cancel_requested THEN coalesce(j.last_error, 'cancelled')
                ELSE j.last_error
            END,
            finished_at = CASE WHEN j.cancel_requested THEN now() END,
            attempts = j.attempts - 1,
            locked_at = NULL,
            locked_by = NULL,
            updated_at = now()
        WHERE
            j.id = any(job_ids) AND j.state = 'running'
            AND j.locked_by = release_jobs.worker_id
        RETURNING j.*
    )

    SELECT array_agg(t) INTO released FROM target AS t;
    PERFORM hopper._release_queue_slots(ARRAY(SELECT r.queue_name FROM unnest(released) AS r));
    PERFORM hopper._settle_dependents_of(released);
    IF EXISTS (SELECT FROM unnest(released) AS r WHERE r.state = 'pending') THEN
        PERFORM hopper._notify_jobs();
    END IF;
    RETURN QUERY
    SELECT p.* FROM unnest(released) AS r
    CROSS JOIN LATERAL hopper._present(r) AS p
    ORDER BY p.id;
END
$$;
