-- Internal helpers shared by the public functions. Like every hopper function
-- they run as the schema owner with a pinned search_path; none is granted to
-- any role.
--
-- Settings of the hot entry points (claiming, completing, failing, adding):
-- plan_cache_mode = force_generic_plan, so each statement is planned once per
-- session rather than per call; enable_seqscan = off, because that one plan
-- may be made while the table is nearly empty and must still use the indexes
-- every path has; jit = off, because a generic plan's cost estimate can pass
-- jit_above_cost and JIT never pays off here. add_job leaves them to
-- _add_checked_job: its own statements read no jobs, and every setting is
-- switched at each call.

-- A stored row as the public record (the columns of the hopper.jobs view).
-- 'scheduled' and 'pending' are told apart by run_at, so a due job reads
-- 'pending' before any claim promotes it.
CREATE OR REPLACE FUNCTION hopper._present(j hopper._jobs)
RETURNS hopper.jobs
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- one row constructor: plpgsql evaluates it without the executor
    RETURN ROW(
        j.id, j.task_identifier, j.payload, j.queue_name,
        CASE
            WHEN j.state NOT IN ('scheduled', 'pending') THEN j.state
            WHEN j.run_at > now() THEN 'scheduled'
            ELSE 'pending'
        END,
        j.priority::integer, j.run_at, j.attempts::integer,
        j.max_attempts::integer, j.last_error, j.errors, j.key, j.flags,
        j.tags, j.depends_on, j.depends_on_tags, j.locked_at, j.locked_by,
        j.created_at, j.updated_at, j.started_at, j.finished_at, j.result,
        j.progress, j.timeout, j.revision, j.cancel_requested, j.dead_letter,
        j.dead_letter_job_id
    )::hopper.jobs;
END
$$;

CREATE OR REPLACE FUNCTION hopper._setting(setting_name text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT s.value FROM hopper.settings AS s WHERE s.name = setting_name
    );
END
$$;

-- One NOTIFY per statement: callers invoke this once, never per row. Sent
-- only while a worker waits for jobs (see migration 0004): a busy worker
-- claims again by itself, and NOTIFY would serialise producers' commits.
-- add_job holds a copy of this test (a call of this function cost 5 % of it):
-- change both.
CREATE OR REPLACE FUNCTION hopper._notify_jobs() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF
        EXISTS (SELECT FROM hopper._workers AS w WHERE w.waiting AND w.retired_at IS NULL)
        OR EXISTS (
            SELECT FROM hopper.settings AS s WHERE s.name = 'notify' AND s.value = 'always'
        )
    THEN
        PERFORM pg_notify('hopper_jobs', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION hopper._raise(
    fn text, sqlstate text, message text
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '%: %', fn, message USING ERRCODE = sqlstate;
END
$$;

-- NULL when the text argument is acceptable, else the problem as
-- {sqlstate, message}. Used for task identifiers and queue names.
CREATE OR REPLACE FUNCTION hopper._text_problem(
    argument text, value text, required boolean, max_length integer
) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN CASE
        WHEN value IS NULL AND required
            THEN ARRAY['22004', argument || ' must not be null']
        WHEN value ~ '^\s*$'
            THEN ARRAY['22023', argument || ' must not be blank']
        WHEN length(value) > max_length
            THEN ARRAY['22023', format(
                '%s must be at most %s characters (got %s)',
                argument, max_length, length(value)
            )]
    END;
END
$$;

-- Raises the first problem among specs (SPEC.md section 2), naming the
-- function (and the spec's 0-based index when there are several); changes
-- nothing. One query over all specs with inline checks, so validating a batch
-- of 100,000 costs one pass, not a function call per spec and rule.
CREATE OR REPLACE FUNCTION hopper._check_specs(
    fn text, specs hopper.job_spec[], name_index boolean
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_batch_size integer;
    first_index bigint;
    problem text[];
BEGIN
    -- one spec never exceeds max_batch_size (a positive integer): add_job
    -- skips the lookup
    IF cardinality(specs) > 1 THEN
        max_batch_size := hopper._setting('max_batch_size')::integer;
        IF cardinality(specs) > max_batch_size THEN
            PERFORM hopper._raise(fn, '54000', format(
                'specs has %s elements, more than max_batch_size (%s)',
                cardinality(specs), max_batch_size
            ));
        END IF;
    END IF;
    SELECT s.n, checked.problem INTO first_index, problem
    FROM unnest(specs) WITH ORDINALITY AS s (
        identifier, payload, queue_name, run_at, max_attempts, job_key, priority, flags,
        job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff, backoff_delay,
        backoff_max, dead_letter, n
    )
    CROSS JOIN (
        SELECT setting.value::integer AS max_payload_bytes
        FROM hopper.settings AS setting WHERE setting.name = 'max_payload_bytes'
    ) AS limits
    -- The rules in reporting order, in four groups; a group of optional
    -- fields is skipped whole when they are all NULL, so a plain spec costs
    -- five tests, not thirty.
    CROSS JOIN LATERAL (SELECT coalesce(
        CASE
            WHEN s.identifier IS NULL THEN ARRAY['22004', 'identifier must not be null']
            -- a first character in ASCII ! to ~ is not a space: no regex for
            -- the usual identifier (a fifth of checking a large batch)
            WHEN ascii(s.identifier) NOT BETWEEN 33 AND 126 AND s.identifier ~ '^\s*$'
                THEN ARRAY['22023', 'identifier must not be blank']
            WHEN length(s.identifier) > 128 THEN ARRAY['22023', format(
                'identifier must be at most 128 characters (got %s)', length(s.identifier)
            )]
        END,
        CASE WHEN num_nonnulls(s.queue_name, s.job_key, s.dead_letter) > 0 THEN CASE
            WHEN s.queue_name ~ '^\s*$' THEN ARRAY['22023', 'queue_name must not be blank']
            WHEN length(s.queue_name) > 128 THEN ARRAY['22023', format(
                'queue_name must be at most 128 characters (got %s)', length(s.queue_name)
            )]
            WHEN s.job_key ~ '^\s*$' THEN ARRAY['22023', 'job_key must not be blank']
            WHEN length(s.job_key) > 512 THEN ARRAY['22023', format(
                'job_key must be at most 512 characters (got %s)', length(s.job_key)
            )]
            WHEN s.dead_letter ~ '^\s*$' THEN ARRAY['22023', 'dead_letter must not be blank']
            WHEN length(s.dead_letter) > 128 THEN ARRAY['22023', format(
                'dead_letter must be at most 128 characters (got %s)', length(s.dead_letter)
            )]
        END END,
        CASE
            WHEN jsonb_typeof(s.payload) NOT IN ('object', 'array') THEN ARRAY['22023', format(
                'payload must be a JSON object or array (got %s)', jsonb_typeof(s.payload)
            )]
            WHEN pg_column_size(s.payload) > limits.max_payload_bytes THEN ARRAY['54000', format(
                'payload is %s bytes, more than max_payload_bytes (%s)',
                pg_column_size(s.payload), limits.max_payload_bytes
            )]
        END,
        CASE WHEN num_nonnulls(
            s.max_attempts, s.priority, s.flags, s.tags, s.job_key_mode, s.depends_on,
            s.depends_on_tags, s.timeout, s.backoff, s.backoff_delay, s.backoff_max
        ) > 0 THEN CASE
            WHEN s.max_attempts NOT BETWEEN 1 AND 32767 THEN ARRAY['22023', format(
                'max_attempts must be between 1 and 32767 (got %s)', s.max_attempts
            )]
            WHEN s.priority NOT BETWEEN -32768 AND 32767 THEN ARRAY['22023', format(
                'priority must be between -32768 and 32767 (got %s)', s.priority
            )]
            WHEN array_position(s.flags, NULL) IS NOT NULL
                THEN ARRAY['22004', 'flags must not contain null']
            WHEN s.flags IS NOT NULL AND EXISTS (
                SELECT FROM unnest(s.flags) AS f (label) WHERE f.label ~ '^\s*$'
            ) THEN ARRAY['22023', 'flags must not contain a blank element']
            WHEN array_position(s.tags, NULL) IS NOT NULL
                THEN ARRAY['22004', 'tags must not contain null']
            WHEN s.tags IS NOT NULL AND EXISTS (
                SELECT FROM unnest(s.tags) AS t (label) WHERE t.label ~ '^\s*$'
            ) THEN ARRAY['22023', 'tags must not contain a blank element']
            WHEN coalesce(s.job_key_mode, 'replace') NOT IN (
                'replace', 'preserve_run_at', 'unsafe_dedupe', 'dedupe'
            ) THEN ARRAY['22023', format(
                'job_key_mode must be one of replace, preserve_run_at, unsafe_dedupe, '
                'dedupe (got "%s")', s.job_key_mode
            )]
            WHEN array_position(s.depends_on, NULL) IS NOT NULL
                THEN ARRAY['22004', 'depends_on must not contain null']
            -- -(i + 1) names the spec at index i of the same call
            WHEN (SELECT min(d.ref) FROM unnest(s.depends_on) AS d (ref)) < -cardinality(specs)
                THEN ARRAY['22023', format(
                    'depends_on refers to the spec at index %s, but the call has %s spec(s)',
                    -(SELECT min(d.ref) FROM unnest(s.depends_on) AS d (ref)) - 1,
                    cardinality(specs)
                )]
            WHEN array_position(s.depends_on_tags, NULL) IS NOT NULL
                THEN ARRAY['22004', 'depends_on_tags must not contain null']
            WHEN s.depends_on_tags IS NOT NULL AND EXISTS (
                SELECT FROM unnest(s.depends_on_tags) AS t (label) WHERE t.label ~ '^\s*$'
            ) THEN ARRAY['22023', 'depends_on_tags must not contain a blank element']
            WHEN s.timeout <= interval '0' THEN ARRAY['22023', format(
                'timeout must be positive (got %s)', s.timeout
            )]
            WHEN s.backoff NOT IN ('exponential', 'linear', 'fixed') THEN ARRAY['22023', format(
                'backoff must be one of exponential, linear, fixed (got "%s")', s.backoff
            )]
            WHEN s.backoff_delay < interval '0' THEN ARRAY['22023', format(
                'backoff_delay must not be negative (got %s)', s.backoff_delay
            )]
            WHEN s.backoff_max < interval '0' THEN ARRAY['22023', format(
                'backoff_max must not be negative (got %s)', s.backoff_max
            )]
        END END
    ) AS problem) AS checked
    WHERE checked.problem IS NOT NULL
    ORDER BY s.n
    LIMIT 1;
    IF problem IS NOT NULL THEN
        PERFORM hopper._raise(fn, problem[1], CASE
            WHEN name_index THEN format('spec at index %s: ', first_index - 1)
            ELSE ''
        END || problem[2]);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION hopper._check_required(
    fn text, argument text, is_null boolean
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF is_null THEN
        PERFORM hopper._raise(fn, '22004', argument || ' must not be null');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION hopper._check_worker_id(
    fn text, worker_id text
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text[] := hopper._text_problem('worker_id', worker_id, true, 128);
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM hopper._raise(fn, problem[1], problem[2]);
    END IF;
END
$$;

-- Batch forms take at most max_batch_size jobs per call.
CREATE OR REPLACE FUNCTION hopper._check_batch_size(
    fn text, argument text, batch_length integer
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_batch_size integer := hopper._setting('max_batch_size')::integer;
BEGIN
    IF batch_length > max_batch_size THEN
        PERFORM hopper._raise(fn, '54000', format(
            '%s has %s elements, more than max_batch_size (%s)',
            argument, batch_length, max_batch_size
        ));
    END IF;
END
$$;

-- Batch forms take parallel arrays; a length mismatch is a caller bug.
CREATE OR REPLACE FUNCTION hopper._check_same_length(
    fn text, argument text, values_length integer, job_ids_length integer
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF values_length IS DISTINCT FROM job_ids_length THEN
        PERFORM hopper._raise(fn, '22023', format(
            '%s has %s elements but job_ids has %s',
            argument, coalesce(values_length, 0), coalesce(job_ids_length, 0)
        ));
    END IF;
END
$$;

-- Named queues must exist before their jobs can be claimed. Inserting an
-- existing name takes no row lock, so producers never wait on claimers.
CREATE OR REPLACE FUNCTION hopper._ensure_queues(queue_names text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO hopper._queues (name)
    SELECT DISTINCT n.name FROM unnest(queue_names) AS n (name)
    WHERE n.name IS NOT NULL
    ORDER BY n.name
    ON CONFLICT (name) DO NOTHING;
END
$$;

-- Gives back one slot per element (the queue of each job that stopped
-- running). Rows are locked in name order so concurrent callers cannot
-- deadlock on each other. A freed slot can make a queued job claimable, so
-- a waiting worker is notified.
CREATE OR REPLACE FUNCTION hopper._release_queue_slots(
    queue_names text[]
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF array_position(queue_names, NULL) IS NOT NULL THEN
        queue_names := array_remove(queue_names, NULL);
    END IF;
    IF cardinality(queue_names) = 0 THEN
        RETURN;
    END IF;
    PERFORM FROM hopper._queues AS q
    WHERE q.name = any(queue_names)
    ORDER BY q.name
    FOR UPDATE;
    UPDATE hopper._queues AS q SET running = q.running - r.slots
    FROM (
        SELECT n.name, count(*) AS slots
        FROM unnest(queue_names) AS n (name)
        GROUP BY n.name
    ) AS r
    WHERE q.name = r.name;
    PERFORM hopper._notify_jobs();
END
$$;

-- How long a failed job waits before its next attempt (SPEC.md 4.2).
CREATE OR REPLACE FUNCTION hopper._backoff(
    policy text, delay interval, max_delay interval, attempts integer
) RETURNS interval
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT CASE
            WHEN policy IS NULL AND delay IS NULL AND max_delay IS NULL
                THEN make_interval(secs => exp(least(attempts, 10)))
            ELSE make_interval(secs => least(
                extract(EPOCH FROM coalesce(delay, interval '1 second'))
                * CASE coalesce(policy, 'exponential')
                    WHEN 'fixed' THEN 1
                    WHEN 'linear' THEN attempts
                    ELSE power(2, least(attempts - 1, 60))
                END,
                extract(EPOCH FROM coalesce(max_delay, interval '100 years'))
            )::double precision)
        END
    );
END
$$;
