-- Producing jobs: add_job, add_jobs and the job-key rules of SPEC.md 3.2.

-- Inserts one job per spec, in spec order, and returns their records in that
-- order (RETURNING yields rows in insertion order, and identity values follow
-- it). For specs without a job key: a keyed one goes through _add_keyed_job.
-- The records are the columns of the hopper.jobs view plus the outcome, built
-- from RETURNING so that a batch is not read a second time (a fresh row's
-- stored state is the view's: both compare run_at with the same now());
-- test_add_jobs checks that they match the view.
CREATE OR REPLACE FUNCTION hopper._insert_jobs(specs hopper.job_spec[])
RETURNS SETOF hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    INSERT INTO hopper._jobs AS i (
        task_identifier, payload, queue_name, state, priority, run_at,
        max_attempts, key, flags, tags, timeout, backoff, backoff_delay,
        backoff_max, dead_letter
    )
    SELECT
        s.identifier,
        coalesce(s.payload, '{}'),
        s.queue_name,
        CASE WHEN s.run_at > now() THEN 'scheduled' ELSE 'pending' END,
        coalesce(s.priority, 0),
        coalesce(s.run_at, now()),
        coalesce(s.max_attempts, 25),
        s.job_key,
        s.flags,
        s.tags,
        s.timeout,
        s.backoff,
        s.backoff_delay,
        s.backoff_max,
        s.dead_letter
    FROM unnest(specs) WITH ORDINALITY AS s
    ORDER BY s.ordinality
    RETURNING
        i.id,
        i.task_identifier,
        i.payload,
        i.queue_name,
        i.state,
        i.priority::integer,
        i.run_at,
        i.attempts::integer,
        i.max_attempts::integer,
        i.last_error,
        i.errors,
        i.key,
        i.flags,
        i.tags,
        i.depends_on,
        i.depends_on_tags,
        i.locked_at,
        i.locked_by,
        i.created_at,
        i.updated_at,
        i.started_at,
        i.finished_at,
        i.result,
        i.progress,
        i.timeout,
        i.revision,
        i.cancel_requested,
        i.dead_letter,
        i.dead_letter_job_id,
        'inserted'::text;
END
$$;

-- Replaces an active, not running job in place (replace / preserve_run_at).
CREATE OR REPLACE FUNCTION hopper._replace_job(
    existing hopper._jobs, spec hopper.job_spec
) RETURNS hopper._jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keep_run_at boolean := spec.job_key_mode = 'preserve_run_at'
        AND existing.attempts = 0;
    new_run_at timestamptz := CASE
        WHEN keep_run_at THEN existing.run_at
        ELSE coalesce(spec.run_at, now())
    END;
    replaced hopper._jobs;
BEGIN
    UPDATE hopper._jobs AS j SET
        task_identifier = spec.identifier,
        -- batch jobs: two arrays merge, anything else replaces
        payload = CASE
            WHEN jsonb_typeof(j.payload) = 'array'
                AND jsonb_typeof(spec.payload) = 'array'
                THEN j.payload || spec.payload
            ELSE coalesce(spec.payload, '{}')
        END,
        queue_name = spec.queue_name,
        state = CASE WHEN new_run_at > now() THEN 'scheduled' ELSE 'pending' END,
        run_at = new_run_at,
        priority = coalesce(spec.priority, 0),
        max_attempts = coalesce(spec.max_attempts, 25),
        flags = spec.flags,
        tags = spec.tags,
        timeout = spec.timeout,
        backoff = spec.backoff,
        backoff_delay = spec.backoff_delay,
        backoff_max = spec.backoff_max,
        dead_letter = spec.dead_letter,
        -- _hold_dependents stores the spec's dependencies, if any
        depends_on = NULL,
        depends_on_tags = NULL,
        attempts = 0,
        last_error = NULL,
        progress = NULL,
        revision = j.revision + 1,
        updated_at = now()
    WHERE j.id = existing.id
    RETURNING * INTO replaced;
    IF existing.tags IS NOT NULL AND existing.tags IS DISTINCT FROM replaced.tags THEN
        -- it may have been the last job holding a barrier's tags
        PERFORM hopper._settle_dependents('{}', existing.tags);
    END IF;
    RETURN replaced;
END
$$;

-- Applies one keyed spec; returns the job it inserted, updated or deduped
-- to. Loops because the job holding the key may finish, start running or
-- appear between our insert attempt and our row lock; each turn either
-- returns or observes a committed change, so it ends quickly.
CREATE OR REPLACE FUNCTION hopper._add_keyed_job(
    spec hopper.job_spec, OUT job_id bigint, OUT outcome text
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mode text := coalesce(spec.job_key_mode, 'replace');
    existing hopper._jobs;
BEGIN
    IF mode = 'unsafe_dedupe' THEN
        SELECT * INTO existing FROM hopper._jobs AS j
        WHERE j.key = spec.job_key
            AND j.state IN ('completed', 'failed', 'cancelled')
        ORDER BY j.finished_at DESC, j.id DESC
        LIMIT 1;
        IF existing.state = 'failed' AND NOT EXISTS (
            SELECT FROM hopper._jobs AS j
            WHERE j.key = spec.job_key
                AND j.state IN ('waiting', 'scheduled', 'pending', 'running')
        ) THEN
            job_id := existing.id;
            outcome := 'deduped';
            RETURN;
        END IF;
    END IF;
    FOR turn IN 1..20 LOOP
        -- the columns of _insert_jobs, whose INSERT has no ON CONFLICT clause:
        -- arbitration writes a WAL record a row (a tenth of a large batch),
        -- and only a keyed spec needs it
        INSERT INTO hopper._jobs AS j (
            task_identifier, payload, queue_name, state, priority, run_at,
            max_attempts, key, flags, tags, timeout, backoff, backoff_delay,
            backoff_max, dead_letter
        ) VALUES (
            spec.identifier,
            coalesce(spec.payload, '{}'),
            spec.queue_name,
            CASE WHEN spec.run_at > now() THEN 'scheduled' ELSE 'pending' END,
            coalesce(spec.priority, 0),
            coalesce(spec.run_at, now()),
            coalesce(spec.max_attempts, 25),
            spec.job_key,
            spec.flags,
            spec.tags,
            spec.timeout,
            spec.backoff,
            spec.backoff_delay,
            spec.backoff_max,
            spec.dead_letter
        )
        ON CONFLICT (key)
        WHERE key IS NOT NULL AND state IN ('waiting', 'scheduled', 'pending', 'running')
        DO NOTHING
        RETURNING j.id INTO job_id;
        IF job_id IS NOT NULL THEN
            outcome := 'inserted';
            RETURN;
        END IF;
        SELECT * INTO existing FROM hopper._jobs AS j
        WHERE j.key = spec.job_key
            AND j.state IN ('waiting', 'scheduled', 'pending', 'running')
        FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        job_id := existing.id;
        IF mode IN ('dedupe', 'unsafe_dedupe') THEN
            outcome := 'deduped';
            RETURN;
        END IF;
        IF existing.state <> 'running' THEN
            PERFORM hopper._replace_job(existing, spec);
            outcome := 'updated';
            RETURN;
        END IF;
        -- the running job keeps running without its key and is not retried
        UPDATE hopper._jobs AS j
        SET key = NULL, max_attempts = j.attempts, updated_at = now()
        WHERE j.id = existing.id;
    END LOOP;
    RAISE EXCEPTION 'add_job: job_key "%" kept changing under us, try again',
        spec.job_key USING ERRCODE = '40001';
END
$$;

-- Named queues must exist before their jobs can be claimed (_ensure_queues
-- skips the NULLs of specs without a queue).
CREATE OR REPLACE FUNCTION hopper._ensure_spec_queues(specs hopper.job_spec[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._ensure_queues(ARRAY(SELECT s.queue_name FROM unnest(specs) AS s));
END
$$;

-- Applies specs with job keys among them, in order: the id and outcome of
-- each, in input order. Unkeyed specs go in one INSERT; keyed ones one by
-- one, so a key repeated within the call sees its earlier specs applied.
CREATE OR REPLACE FUNCTION hopper._apply_specs(
    specs hopper.job_spec[], OUT ids bigint[], OUT outcomes text[]
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unkeyed_index integer[] := ARRAY(
        SELECT i FROM generate_subscripts(specs, 1) AS i
        WHERE specs[i].job_key IS NULL ORDER BY i
    );
    keyed record;
BEGIN
    outcomes := array_fill('inserted'::text, ARRAY[cardinality(specs)]);
    PERFORM hopper._ensure_spec_queues(specs);
    IF cardinality(unkeyed_index) > 0 THEN
        ids := ARRAY(
            SELECT i.id FROM hopper._insert_jobs(
                ARRAY(SELECT specs[i] FROM unnest(unkeyed_index) AS i ORDER BY i)
            ) AS i
            ORDER BY i.id
        );
    END IF;
    ids := ARRAY(
        SELECT ids[k] FROM unnest(unkeyed_index) WITH ORDINALITY AS u (i, k)
        RIGHT JOIN generate_subscripts(specs, 1) AS g (i) ON u.i = g.i
        ORDER BY g.i
    );
    FOR i IN 1..cardinality(specs) LOOP
        IF specs[i].job_key IS NOT NULL THEN
            keyed := hopper._add_keyed_job(specs[i]);
            ids[i] := keyed.job_id;
            outcomes[i] := keyed.outcome;
        END IF;
    END LOOP;
    IF EXISTS (
        SELECT FROM generate_subscripts(specs, 1) AS i
        WHERE outcomes[i] <> 'deduped' AND coalesce(specs[i].run_at, now()) <= now()
    ) THEN
        PERFORM hopper._notify_jobs();
    END IF;
END
$$;

-- Adds (or, with a job key, updates or dedupes) one job; SPEC.md 3.1-3.2.
-- The job exists only if the caller's transaction commits.
-- The common case (an identifier, a payload, perhaps a run_at) takes two
-- statements: an INSERT that reads the size limit and returns the record, and
-- the notification test (the test of _notify_jobs, inlined). Each further
-- statement, function call or table read cost about a tenth of the call.
CREATE OR REPLACE FUNCTION hopper.add_job(
    identifier text,
    payload json DEFAULT NULL,
    queue_name text DEFAULT NULL,
    run_at timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    job_key text DEFAULT NULL,
    priority integer DEFAULT NULL,
    flags text[] DEFAULT NULL,
    job_key_mode text DEFAULT 'replace',
    tags text[] DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL,
    depends_on_tags text[] DEFAULT NULL,
    timeout interval DEFAULT NULL,
    backoff text DEFAULT NULL,
    backoff_delay interval DEFAULT NULL,
    backoff_max interval DEFAULT NULL,
    dead_letter text DEFAULT NULL
) RETURNS hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    body jsonb;
    added hopper.added_job;
BEGIN
    -- json text may escape U+0000, which jsonb cannot hold: the cast's own
    -- error names neither the function nor the argument
    IF strpos(payload::text, '\u0000') > 0 THEN
        body := hopper._parse_json('add_job', 'payload', payload::text);
    ELSE
        body := payload;
    END IF;
    -- these hold, so every rule of _check_specs but the size limit holds
    IF coalesce(
        identifier ~ '\S' AND length(identifier) <= 128
        AND num_nonnulls(
            queue_name, max_attempts, job_key, priority, flags, tags, depends_on,
            depends_on_tags, timeout, backoff, backoff_delay, backoff_max, dead_letter
        ) = 0
        AND job_key_mode = 'replace'
        AND (body IS NULL OR jsonb_typeof(body) IN ('object', 'array')),
        false
    ) THEN
        -- the columns and record of _insert_jobs
        INSERT INTO hopper._jobs AS i (task_identifier, payload, state, run_at)
        SELECT
            identifier,
            coalesce(body, '{}'),
            CASE WHEN add_job.run_at > now() THEN 'scheduled' ELSE 'pending' END,
            coalesce(add_job.run_at, now())
        FROM hopper.settings AS limits
        WHERE
            limits.name = 'max_payload_bytes'
            AND (body IS NULL OR pg_column_size(body) <= limits.value::integer)
        RETURNING
            i.id, i.task_identifier, i.payload, i.queue_name, i.state,
            i.priority::integer, i.run_at, i.attempts::integer, i.max_attempts::integer,
            i.last_error, i.errors, i.key, i.flags, i.tags, i.depends_on,
            i.depends_on_tags, i.locked_at, i.locked_by, i.created_at, i.updated_at,
            i.started_at, i.finished_at, i.result, i.progress, i.timeout, i.revision,
            i.cancel_requested, i.dead_letter, i.dead_letter_job_id, 'inserted'::text
        INTO added;
        -- no row: the payload is too large, and the full check says so
        IF added.id IS NOT NULL THEN
            IF added.state = 'pending' AND (
                EXISTS (SELECT FROM hopper._workers AS w WHERE w.waiting AND w.retired_at IS NULL)
                OR EXISTS (
                    SELECT FROM hopper.settings AS s WHERE s.name = 'notify' AND s.value = 'always'
                )
            ) THEN
                PERFORM pg_notify('hopper_jobs', '');
            END IF;
            RETURN added;
        END IF;
    END IF;
    RETURN hopper._add_checked_job(ROW(
        identifier, body, queue_name, run_at, max_attempts, job_key,
        priority, flags, job_key_mode, tags, depends_on, depends_on_tags,
        timeout, backoff, backoff_delay, backoff_max, dead_letter
    ));
END
$$;

-- add_job after the full check of the spec: job keys, queues, and any other
-- option.
CREATE OR REPLACE FUNCTION hopper._add_checked_job(spec hopper.job_spec)
RETURNS hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    job_id bigint;
    outcome text;
    added hopper.added_job;
BEGIN
    PERFORM hopper._check_specs('add_job', ARRAY[spec], false);
    IF cardinality(spec.depends_on) > 0 OR cardinality(spec.depends_on_tags) > 0 THEN
        SELECT a.ids[1], a.outcomes[1] INTO job_id, outcome
        FROM hopper._apply_dependent_specs('add_job', ARRAY[spec], false) AS a;
        SELECT v.*, outcome INTO added FROM hopper.jobs AS v WHERE v.id = job_id;
        RETURN added;
    END IF;
    IF spec.job_key IS NOT NULL THEN
        SELECT a.ids[1], a.outcomes[1] INTO job_id, outcome
        FROM hopper._apply_specs(ARRAY[spec]) AS a;
        -- a separate statement, to see the rows _apply_specs wrote
        SELECT v.*, outcome INTO added FROM hopper.jobs AS v WHERE v.id = job_id;
        RETURN added;
    END IF;
    IF spec.queue_name IS NOT NULL THEN
        PERFORM hopper._ensure_queues(ARRAY[spec.queue_name]);
    END IF;
    SELECT * INTO added FROM hopper._insert_jobs(ARRAY[spec]);
    IF spec.run_at IS NULL OR spec.run_at <= now() THEN
        PERFORM hopper._notify_jobs();
    END IF;
    RETURN added;
END
$$;

-- Whether every spec of a batch is plain (an identifier, a payload, perhaps
-- a run_at) and within the limits, so that it passes every rule of
-- _check_specs, and whether any is due: one pass over the batch where
-- _check_specs and add_jobs' test for keys, queues and due jobs take two.
CREATE OR REPLACE FUNCTION hopper._plain_batch(
    specs hopper.job_spec[], OUT all_plain boolean, OUT any_due boolean
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_payload_bytes integer;
    max_batch_size integer;
BEGIN
    SELECT
        max(l.value) FILTER (WHERE l.name = 'max_payload_bytes')::integer,
        max(l.value) FILTER (WHERE l.name = 'max_batch_size')::integer
    INTO max_payload_bytes, max_batch_size
    FROM hopper.settings AS l
    WHERE l.name IN ('max_payload_bytes', 'max_batch_size');
    -- the limits as variables, not joined to every spec: 1.5-6 ms of 100,000
    SELECT
        coalesce(cardinality(specs) <= max_batch_size, false) AND bool_and(coalesce(
            -- a first character in ASCII ! to ~: not blank
            ascii(s.identifier) BETWEEN 33 AND 126 AND length(s.identifier) <= 128
            AND num_nonnulls(
                s.queue_name, s.max_attempts, s.job_key, s.priority, s.flags,
                s.job_key_mode, s.tags, s.depends_on, s.depends_on_tags, s.timeout,
                s.backoff, s.backoff_delay, s.backoff_max, s.dead_letter
            ) = 0
            AND (s.payload IS NULL OR (
                jsonb_typeof(s.payload) IN ('object', 'array')
                AND pg_column_size(s.payload) <= max_payload_bytes
            )),
            false
        )),
        bool_or(coalesce(s.run_at, now()) <= now())
    INTO all_plain, any_due
    FROM unnest(specs) AS s;
END
$$;

-- Adds many jobs in one call; one row per spec, in input order (SPEC.md 3.3).
-- job_key_preserve_run_at makes preserve_run_at the mode of specs giving none.
CREATE OR REPLACE FUNCTION hopper.add_jobs(
    specs hopper.job_spec[],
    job_key_preserve_run_at boolean DEFAULT false
) RETURNS SETOF hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
-- the batch and its records pass through tuplestores, which spill to disk
-- past work_mem: at the default 4 MB, 8 of the 350 ms of 100,000 jobs
SET work_mem = '64MB'
AS $$
DECLARE
    job_ids bigint[];
    outcomes text[];
    all_plain boolean;
    any_keyed boolean;
    any_queued boolean;
    any_dependent boolean;
    any_due boolean;
BEGIN
    PERFORM hopper._check_required('add_jobs', 'specs', specs IS NULL);
    IF cardinality(specs) = 0 THEN
        RETURN;
    END IF;
    SELECT p.all_plain, p.any_due INTO all_plain, any_due FROM hopper._plain_batch(specs) AS p;
    IF all_plain THEN
        -- the common batch: the INSERT, columns and records of _insert_jobs,
        -- here because a call of it would copy every record once more. The
        -- array is unnested in a select list, which hands its elements on
        -- in array order as it reads them; unnest in FROM stores all of
        -- them first and needed a sort by ordinality to say so (6 ms of
        -- 100,000 jobs). test_add_jobs checks the order.
        RETURN QUERY
        INSERT INTO hopper._jobs AS i (task_identifier, payload, state, run_at)
        SELECT
            (u.spec).identifier,
            coalesce((u.spec).payload, '{}'),
            CASE WHEN (u.spec).run_at > now() THEN 'scheduled' ELSE 'pending' END,
            coalesce((u.spec).run_at, now())
        FROM (SELECT unnest(specs) AS spec) AS u
        RETURNING
            i.id, i.task_identifier, i.payload, i.queue_name, i.state,
            i.priority::integer, i.run_at, i.attempts::integer, i.max_attempts::integer,
            i.last_error, i.errors, i.key, i.flags, i.tags, i.depends_on,
            i.depends_on_tags, i.locked_at, i.locked_by, i.created_at, i.updated_at,
            i.started_at, i.finished_at, i.result, i.progress, i.timeout, i.revision,
            i.cancel_requested, i.dead_letter, i.dead_letter_job_id, 'inserted'::text;
        IF any_due THEN
            PERFORM hopper._notify_jobs();
        END IF;
        RETURN;
    END IF;
    IF job_key_preserve_run_at THEN
        specs := ARRAY(
            SELECT jsonb_populate_record(
                specs[i], jsonb_build_object(
                    'job_key_mode',
                    coalesce(specs[i].job_key_mode, 'preserve_run_at')
                )
            )
            FROM generate_subscripts(specs, 1) AS i
            ORDER BY i
        );
    END IF;
    PERFORM hopper._check_specs('add_jobs', specs, true);
    -- one pass (each unnest of a large array costs as much as a test);
    -- any_due came from _plain_batch
    SELECT
        bool_or(s.job_key IS NOT NULL),
        bool_or(s.queue_name IS NOT NULL),
        bool_or(cardinality(s.depends_on) > 0 OR cardinality(s.depends_on_tags) > 0)
    INTO any_keyed, any_queued, any_dependent
    FROM unnest(specs) AS s;
    IF NOT any_keyed AND NOT any_dependent THEN
        -- the common case: one INSERT, whose RETURNING gives the records
        IF any_queued THEN
            PERFORM hopper._ensure_spec_queues(specs);
        END IF;
        RETURN QUERY SELECT * FROM hopper._insert_jobs(specs);
        IF any_due THEN
            PERFORM hopper._notify_jobs();
        END IF;
        RETURN;
    END IF;
    IF any_dependent THEN
        SELECT a.ids, a.outcomes INTO job_ids, outcomes
        FROM hopper._apply_dependent_specs('add_jobs', specs, true) AS a;
    ELSE
        SELECT a.ids, a.outcomes INTO job_ids, outcomes FROM hopper._apply_specs(specs) AS a;
    END IF;
    -- a job key can update or dedupe to an existing job: those are read
    -- back through the hopper.jobs view, the one definition of a record
    RETURN QUERY
    SELECT v.*, x.outcome
    FROM unnest(job_ids, outcomes) WITH ORDINALITY AS x (id, outcome, n)
    INNER JOIN hopper.jobs AS v ON x.id = v.id
    ORDER BY x.n;
END
$$;

-- The jsonb-array form of add_jobs: each element is an object whose keys are
-- add_job's parameter names.
CREATE OR REPLACE FUNCTION hopper.add_jobs(
    specs jsonb,
    job_key_preserve_run_at boolean DEFAULT false
) RETURNS SETOF hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- hot path: see "Settings of the hot entry points" in _helpers.sql
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_seqscan = off
-- the batch and its records pass through tuplestores, which spill to disk
-- past work_mem: at the default 4 MB, 8 of the 350 ms of 100,000 jobs
SET work_mem = '64MB'
AS $$
BEGIN
    PERFORM hopper._check_required('add_jobs', 'specs', specs IS NULL);
    IF jsonb_typeof(specs) <> 'array' THEN
        PERFORM hopper._raise('add_jobs', '22023', 'specs must be a JSON array');
    END IF;
    RETURN QUERY SELECT * FROM hopper.add_jobs(
        ARRAY(
            SELECT jsonb_populate_record(NULL::hopper.job_spec, e.spec)
            FROM jsonb_array_elements(specs) WITH ORDINALITY AS e (spec, n)
            ORDER BY e.n
        ),
        job_key_preserve_run_at
    );
END
$$;

-- JSON text as jsonb, or an error that names fn and argument: 22023 for text
-- that is not JSON, 22P05 for the character U+0000, which jsonb cannot hold.
CREATE OR REPLACE FUNCTION hopper._parse_json(fn text, argument text, value text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN value::jsonb;
EXCEPTION
    WHEN untranslatable_character THEN
        PERFORM hopper._raise(fn, '22P05', format(
            '%s cannot hold the character U+0000 (\u0000): jsonb cannot store it', argument
        ));
    WHEN invalid_text_representation THEN
        PERFORM hopper._raise(fn, '22023', format('%s must be JSON (%s)', argument, sqlerrm));
END
$$;

-- add_jobs of a JSON array given as text: a string literal ('[...]' from psql)
-- or a driver's untyped string matches both other forms, which PostgreSQL
-- refuses to choose between; text is the type it picks for such an argument.
CREATE OR REPLACE FUNCTION hopper.add_jobs(
    specs text,
    job_key_preserve_run_at boolean DEFAULT false
) RETURNS SETOF hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parsed jsonb;
BEGIN
    PERFORM hopper._check_required('add_jobs', 'specs', specs IS NULL);
    parsed := hopper._parse_json('add_jobs', 'specs', specs);
    RETURN QUERY SELECT * FROM hopper.add_jobs(parsed, job_key_preserve_run_at);
END
$$;
