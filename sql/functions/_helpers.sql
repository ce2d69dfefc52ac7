-- Internal helpers shared by the public functions. Like every hopper function
-- they run as the schema owner with a pinned search_path; none is granted to
-- any role.

-- The public state of a stored job: 'scheduled' and 'pending' are told apart
-- by run_at, so a due job reads 'pending' before any claim promotes it.
CREATE OR REPLACE FUNCTION hopper._public_state(
    stored_state text, run_at timestamptz
) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN stored_state NOT IN ('scheduled', 'pending') THEN stored_state
        WHEN run_at > now() THEN 'scheduled'
        ELSE 'pending'
    END
$$;

-- A stored row as the public record (the columns of the hopper.jobs view).
CREATE OR REPLACE FUNCTION hopper._present(j hopper._jobs)
RETURNS hopper.jobs
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT
        j.id, j.task_identifier, j.payload, j.queue_name,
        hopper._public_state(j.state, j.run_at),
        j.priority::integer, j.run_at, j.attempts::integer,
        j.max_attempts::integer, j.last_error, j.errors, j.key, j.flags,
        j.tags, j.depends_on, j.depends_on_tags, j.locked_at, j.locked_by,
        j.created_at, j.updated_at, j.started_at, j.finished_at, j.result,
        j.progress, j.timeout, j.revision, j.cancel_requested, j.dead_letter,
        j.dead_letter_job_id
$$;

CREATE OR REPLACE FUNCTION hopper._added(j hopper._jobs, outcome text)
RETURNS hopper.added_job
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.*, outcome FROM hopper._present(j) AS p
$$;

CREATE OR REPLACE FUNCTION hopper._setting(setting_name text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.value FROM hopper.settings AS s WHERE s.name = setting_name
$$;

-- One NOTIFY per statement: callers invoke this once, never per row.
CREATE OR REPLACE FUNCTION hopper._notify_jobs() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_notify('hopper_jobs', '')
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

CREATE OR REPLACE FUNCTION hopper._is_blank(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT value ~ '^\s*$'
$$;

-- NULL when the text argument is acceptable, else the problem as
-- {sqlstate, message}. Used for task identifiers and queue names.
CREATE OR REPLACE FUNCTION hopper._text_problem(
    argument text, value text, required boolean, max_length integer
) RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN value IS NULL AND required
            THEN ARRAY['22004', argument || ' must not be null']
        WHEN hopper._is_blank(value)
            THEN ARRAY['22023', argument || ' must not be blank']
        WHEN length(value) > max_length
            THEN ARRAY['22023', format(
                '%s must be at most %s characters (got %s)',
                argument, max_length, length(value)
            )]
    END
$$;

CREATE OR REPLACE FUNCTION hopper._labels_problem(
    argument text, labels text[]
) RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN array_position(labels, NULL) IS NOT NULL
            THEN ARRAY['22004', argument || ' must not contain null']
        WHEN EXISTS (SELECT FROM unnest(labels) AS l WHERE hopper._is_blank(l))
            THEN ARRAY['22023', argument || ' must not contain a blank element']
    END
$$;

-- The first problem of a job spec, as {sqlstate, message}, or NULL.
CREATE OR REPLACE FUNCTION hopper._spec_problem(
    spec hopper.job_spec, max_payload_bytes integer
) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload_type text := json_typeof(spec.payload);
BEGIN
    RETURN coalesce(
        hopper._text_problem('identifier', spec.identifier, true, 128),
        hopper._text_problem('queue_name', spec.queue_name, false, 128),
        hopper._text_problem('job_key', spec.job_key, false, 512),
        hopper._text_problem('dead_letter', spec.dead_letter, false, 128),
        CASE WHEN payload_type NOT IN ('object', 'array') THEN ARRAY[
            '22023',
            format('payload must be a JSON object or array (got %s)', payload_type)
        ] END,
        CASE WHEN pg_column_size(spec.payload::jsonb) > max_payload_bytes THEN ARRAY[
            '54000',
            format(
                'payload is %s bytes, more than max_payload_bytes (%s)',
                pg_column_size(spec.payload::jsonb), max_payload_bytes
            )
        ] END,
        CASE WHEN spec.max_attempts NOT BETWEEN 1 AND 32767 THEN ARRAY[
            '22023',
            format('max_attempts must be between 1 and 32767 (got %s)', spec.max_attempts)
        ] END,
        CASE WHEN spec.priority NOT BETWEEN -32768 AND 32767 THEN ARRAY[
            '22023',
            format('priority must be between -32768 and 32767 (got %s)', spec.priority)
        ] END,
        hopper._labels_problem('flags', spec.flags),
        hopper._labels_problem('tags', spec.tags),
        CASE WHEN coalesce(spec.job_key_mode, 'replace') NOT IN (
            'replace', 'preserve_run_at', 'unsafe_dedupe', 'dedupe'
        ) THEN ARRAY[
            '22023',
            format(
                'job_key_mode must be one of replace, preserve_run_at, '
                'unsafe_dedupe, dedupe (got "%s")', spec.job_key_mode
            )
        ] END,
        CASE WHEN cardinality(spec.depends_on) > 0
            OR cardinality(spec.depends_on_tags) > 0 THEN ARRAY[
            '0A000', 'depends_on and depends_on_tags are not supported yet'
        ] END,
        CASE WHEN spec.timeout <= interval '0' THEN ARRAY[
            '22023', format('timeout must be positive (got %s)', spec.timeout)
        ] END,
        CASE WHEN spec.backoff NOT IN ('exponential', 'linear', 'fixed') THEN ARRAY[
            '22023',
            format(
                'backoff must be one of exponential, linear, fixed (got "%s")',
                spec.backoff
            )
        ] END,
        CASE WHEN spec.backoff_delay < interval '0' THEN ARRAY[
            '22023',
            format('backoff_delay must not be negative (got %s)', spec.backoff_delay)
        ] END,
        CASE WHEN spec.backoff_max < interval '0' THEN ARRAY[
            '22023',
            format('backoff_max must not be negative (got %s)', spec.backoff_max)
        ] END
    );
END
$$;

-- Raises the first problem among specs, naming the function (and the index
-- of the spec when there are several); changes nothing.
CREATE OR REPLACE FUNCTION hopper._check_specs(
    fn text, specs hopper.job_spec[], name_index boolean
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_payload_bytes integer := hopper._setting('max_payload_bytes')::integer;
    max_batch_size integer := hopper._setting('max_batch_size')::integer;
    first_index integer;
    problem text[];
BEGIN
    IF cardinality(specs) > max_batch_size THEN
        PERFORM hopper._raise(fn, '54000', format(
            'specs has %s elements, more than max_batch_size (%s)',
            cardinality(specs), max_batch_size
        ));
    END IF;
    SELECT i, hopper._spec_problem(specs[i], max_payload_bytes)
    INTO first_index, problem
    FROM generate_subscripts(specs, 1) AS i
    WHERE hopper._spec_problem(specs[i], max_payload_bytes) IS NOT NULL
    ORDER BY i
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
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO hopper._queues (name)
    SELECT DISTINCT n.name FROM unnest(queue_names) AS n (name)
    WHERE n.name IS NOT NULL
    ORDER BY n.name
    ON CONFLICT (name) DO NOTHING
$$;

-- Gives back one slot per element (the queue of each job that stopped
-- running). Rows are locked in name order so concurrent callers cannot
-- deadlock on each other.
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
END
$$;

-- How long a failed job waits before its next attempt (SPEC.md 4.2).
CREATE OR REPLACE FUNCTION hopper._backoff(
    policy text, delay interval, max_delay interval, attempts integer
) RETURNS interval
LANGUAGE sql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;
