-- Schedules (SPEC.md 4.7): cron expressions parsed in SQL, and the firings
-- they owe, each enqueued once.

-- A number, or a name's position in names counted from base; NULL otherwise.
CREATE OR REPLACE FUNCTION hopper._cron_value(
    token text, names text[], base integer
) RETURNS integer
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF token ~ '^[0-9]{1,2}$' THEN
        RETURN token::integer;
    END IF;
    RETURN array_position(names, token) - 1 + base;
END
$$;

-- The sorted values one field allows (lists, ranges, steps, names); NULL when
-- the field is not valid.
CREATE OR REPLACE FUNCTION hopper._cron_values(
    field text, low integer, high integer, names text[], base integer
) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text;
    parts text[];
    first_value integer;
    last_value integer;
    step integer;
    allowed integer[] := '{}';
BEGIN
    FOREACH part IN ARRAY string_to_array(lower(field), ',') LOOP
        parts := regexp_match(part, '^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]{1,2}))?$');
        IF parts IS NULL OR (parts[1] = '*' AND parts[2] IS NOT NULL) THEN
            RETURN NULL;
        END IF;
        first_value := CASE
            WHEN parts[1] = '*' THEN low
            ELSE hopper._cron_value(parts[1], names, base)
        END;
        last_value := CASE
            WHEN parts[1] = '*' THEN high
            WHEN parts[2] IS NOT NULL THEN hopper._cron_value(parts[2], names, base)
            WHEN parts[3] IS NOT NULL THEN high
            ELSE first_value
        END;
        step := coalesce(parts[3]::integer, 1);
        IF NOT coalesce(
            step >= 1 AND low <= first_value AND first_value <= last_value
            AND last_value <= high,
            false
        ) THEN
            RETURN NULL;
        END IF;
        allowed := allowed || ARRAY(SELECT generate_series(first_value, last_value, step));
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT v.value FROM unnest(allowed) AS v (value) ORDER BY v.value);
END
$$;

-- Parses five fields (minute hour day-of-month month day-of-week) or a macro
-- into the values each field allows, and whether a day matches either day
-- field (both restricted, neither starting with "*": Vixie cron's rule);
-- raises 22023 naming the field that is not valid.
CREATE OR REPLACE FUNCTION hopper._cron_parse(fn text, cron text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fields text[] := regexp_split_to_array(btrim(CASE lower(btrim(cron))
        WHEN '@hourly' THEN '0 * * * *'
        WHEN '@daily' THEN '0 0 * * *'
        WHEN '@midnight' THEN '0 0 * * *'
        WHEN '@weekly' THEN '0 0 * * 0'
        WHEN '@monthly' THEN '0 0 1 * *'
        WHEN '@yearly' THEN '0 0 1 1 *'
        WHEN '@annually' THEN '0 0 1 1 *'
        ELSE cron
    END), '\s+');
    months text[] := ARRAY[
        'jan', 'feb', 'mar', 'apr', 'may', 'jun',
        'jul', 'aug', 'sep', 'oct', 'nov', 'dec'
    ];
    weekdays text[] := ARRAY['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
    minutes integer[];
    hours integer[];
    days integer[];
    month_numbers integer[];
    weekday_numbers integer[];
BEGIN
    PERFORM hopper._check_required(fn, 'cron', cron IS NULL);
    IF cardinality(fields) <> 5 THEN
        PERFORM hopper._raise(fn, '22023', format(
            'cron must have five fields (minute hour day-of-month month day-of-week)'
            ' or be a macro such as @daily (got "%s")', cron
        ));
    END IF;
    minutes := hopper._cron_values(fields[1], 0, 59, NULL, 0);
    hours := hopper._cron_values(fields[2], 0, 23, NULL, 0);
    days := hopper._cron_values(fields[3], 1, 31, NULL, 0);
    month_numbers := hopper._cron_values(fields[4], 1, 12, months, 1);
    -- 7 is Sunday too
    weekday_numbers := ARRAY(
        SELECT DISTINCT d.day % 7
        FROM unnest(hopper._cron_values(fields[5], 0, 7, weekdays, 0)) AS d (day)
        ORDER BY 1
    );
    IF minutes IS NULL OR hours IS NULL OR days IS NULL OR month_numbers IS NULL
        OR cardinality(weekday_numbers) = 0 THEN
        PERFORM hopper._raise(fn, '22023', format(
            'cron field %s is not valid (got "%s")',
            CASE
                WHEN minutes IS NULL THEN 'minute'
                WHEN hours IS NULL THEN 'hour'
                WHEN days IS NULL THEN 'day-of-month'
                WHEN month_numbers IS NULL THEN 'month'
                ELSE 'day-of-week'
            END,
            cron
        ));
    END IF;
    RETURN jsonb_build_object(
        'minutes', minutes, 'hours', hours, 'days', days, 'months', month_numbers,
        'weekdays', weekday_numbers,
        'either_day', left(fields[3], 1) <> '*' AND left(fields[5], 1) <> '*'
    );
END
$$;

-- A JSON array of numbers as integer[].
CREATE OR REPLACE FUNCTION hopper._json_integers(value jsonb)
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(SELECT e.value::integer FROM jsonb_array_elements_text(value) AS e (value));
END
$$;

-- The firings of a parsed cron in (after, upto], in order. Fields match the
-- wall clock of timezone: a time skipped by a daylight-saving change fires
-- at the instant PostgreSQL maps it to, a repeated one fires once.
CREATE OR REPLACE FUNCTION hopper._cron_firings(
    parsed jsonb, timezone text, after timestamptz, upto timestamptz
) RETURNS SETOF timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    minutes integer[] := hopper._json_integers(parsed -> 'minutes');
    hours integer[] := hopper._json_integers(parsed -> 'hours');
    days integer[] := hopper._json_integers(parsed -> 'days');
    months integer[] := hopper._json_integers(parsed -> 'months');
    weekdays integer[] := hopper._json_integers(parsed -> 'weekdays');
    either_day boolean := (parsed -> 'either_day')::boolean;
BEGIN
    RETURN QUERY
    SELECT DISTINCT f.at
    FROM generate_series(
        date_trunc('day', after AT TIME ZONE timezone),
        date_trunc('day', upto AT TIME ZONE timezone),
        interval '1 day'
    ) AS d (day)
    CROSS JOIN unnest(hours) AS h (hour)
    CROSS JOIN unnest(minutes) AS m (minute)
    CROSS JOIN LATERAL (
        SELECT (d.day + make_interval(hours => h.hour, mins => m.minute))
            AT TIME ZONE timezone AS at
    ) AS f
    WHERE
        extract(MONTH FROM d.day)::integer = any(months)
        AND CASE
            WHEN either_day
                THEN extract(DAY FROM d.day)::integer = any(days)
                OR extract(DOW FROM d.day)::integer = any(weekdays)
            ELSE extract(DAY FROM d.day)::integer = any(days)
                AND extract(DOW FROM d.day)::integer = any(weekdays)
        END
        AND f.at > after AND f.at <= upto
    ORDER BY f.at;
END
$$;

-- The latest firing in (after, upto], or NULL: walks back a day at a time,
-- so a schedule left unattended for long costs one day per call, not every
-- firing it missed.
CREATE OR REPLACE FUNCTION hopper._cron_latest(
    parsed jsonb, timezone text, after timestamptz, upto timestamptz
) RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    day_end timestamptz := upto;
    latest timestamptz;
BEGIN
    WHILE day_end > after LOOP
        SELECT max(f.at) INTO latest FROM hopper._cron_firings(
            parsed, timezone, greatest(after, day_end - interval '1 day'), day_end
        ) AS f (at);
        IF latest IS NOT NULL THEN
            RETURN latest;
        END IF;
        day_end := day_end - interval '1 day';
    END LOOP;
    RETURN NULL;
END
$$;

-- The first firing of a parsed cron after `after`, or NULL when none comes
-- within 28 years (after which dates fall on the same weekdays again,
-- so such a cron, say "0 0 30 2 *", never fires). Tries a day, a month, a
-- year, then the rest, so a frequent cron never generates far ahead.
CREATE OR REPLACE FUNCTION hopper._cron_next(
    parsed jsonb, timezone text, after timestamptz
) RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon interval;
    first_firing timestamptz;
BEGIN
    FOREACH horizon IN ARRAY ARRAY[
        interval '1 day', interval '32 days', interval '367 days', interval '28 years 2 days'
    ] LOOP
        SELECT min(f.at) INTO first_firing
        FROM hopper._cron_firings(parsed, timezone, after, after + horizon) AS f (at);
        IF first_firing IS NOT NULL THEN
            RETURN first_firing;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Trigger of _schedules (migration 0015): next_fire_at is the first firing
-- after the last one enqueued (a new schedule: after its creation).
CREATE OR REPLACE FUNCTION hopper._schedule_next_fire_at() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.next_fire_at := hopper._cron_next(
        hopper._cron_parse('add_schedule', NEW.cron), NEW.timezone,
        coalesce(NEW.last_fired_at, NEW.created_at)
    );
    RETURN NEW;
END
$$;

-- The job of one firing: the schedule's task, options and payload, with the
-- firing as run_at and in the payload's "_cron".
CREATE OR REPLACE FUNCTION hopper._firing_spec(
    schedule hopper._schedules, fired_at timestamptz, backfilled boolean
) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN schedule.job_options || jsonb_build_object(
        'identifier', schedule.task_identifier,
        'run_at', fired_at,
        'payload', schedule.payload || jsonb_build_object('_cron', jsonb_build_object(
            'ts', to_char(fired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
            'backfilled', backfilled
        ))
    );
END
$$;

-- Raises unless timezone is a time zone PostgreSQL knows.
CREATE OR REPLACE FUNCTION hopper._check_timezone(fn text, timezone text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_required(fn, 'timezone', timezone IS NULL);
    PERFORM now() AT TIME ZONE timezone;
EXCEPTION WHEN invalid_parameter_value THEN
    PERFORM hopper._raise(fn, '22023', format('timezone "%s" is not known', timezone));
END
$$;

-- Creates or replaces a schedule; a replaced schedule keeps its last firing.
-- Returns it with the columns of hopper.schedules (see 0013).
-- The job options are add_job's, but run_at (each firing's time) and the
-- dependencies.
CREATE OR REPLACE FUNCTION hopper.add_schedule(
    name text,
    cron text,
    identifier text,
    payload jsonb DEFAULT '{}',
    queue_name text DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    job_key text DEFAULT NULL,
    priority integer DEFAULT NULL,
    flags text[] DEFAULT NULL,
    job_key_mode text DEFAULT NULL,
    tags text[] DEFAULT NULL,
    timeout interval DEFAULT NULL,
    backoff text DEFAULT NULL,
    backoff_delay interval DEFAULT NULL,
    backoff_max interval DEFAULT NULL,
    dead_letter text DEFAULT NULL,
    backfill interval DEFAULT NULL,
    timezone text DEFAULT 'UTC'
) RETURNS hopper._schedules
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text[] := hopper._text_problem('name', name, true, 128);
    body jsonb := coalesce(payload, '{}');
    added hopper._schedules;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM hopper._raise('add_schedule', problem[1], problem[2]);
    END IF;
    PERFORM hopper._cron_parse('add_schedule', cron);
    PERFORM hopper._check_specs('add_schedule', ARRAY[ROW(
        identifier, body, queue_name, NULL, max_attempts, job_key, priority, flags,
        job_key_mode, tags, NULL, NULL, timeout, backoff, backoff_delay, backoff_max,
        dead_letter
    )::hopper.job_spec], false);
    IF jsonb_typeof(body) <> 'object' THEN
        PERFORM hopper._raise('add_schedule', '22023', format(
            'payload must be a JSON object, which each firing adds "_cron" to (got %s)',
            jsonb_typeof(body)
        ));
    END IF;
    IF backfill < interval '0' THEN
        PERFORM hopper._raise('add_schedule', '22023', format(
            'backfill must not be negative (got %s)', backfill
        ));
    END IF;
    PERFORM hopper._check_timezone('add_schedule', timezone);
    INSERT INTO hopper._schedules AS s (
        name, cron, task_identifier, payload, job_options, backfill, timezone
    ) VALUES (
        add_schedule.name, add_schedule.cron, identifier, body,
        jsonb_strip_nulls(jsonb_build_object(
            'queue_name', queue_name, 'max_attempts', max_attempts, 'job_key', job_key,
            'priority', priority, 'flags', flags, 'job_key_mode', job_key_mode,
            'tags', tags, 'timeout', timeout, 'backoff', backoff,
            'backoff_delay', backoff_delay, 'backoff_max', backoff_max,
            'dead_letter', dead_letter
        )),
        add_schedule.backfill, add_schedule.timezone
    )
    ON CONFLICT ON CONSTRAINT _schedules_pkey DO UPDATE SET
        cron = excluded.cron,
        task_identifier = excluded.task_identifier,
        payload = excluded.payload,
        job_options = excluded.job_options,
        backfill = excluded.backfill,
        timezone = excluded.timezone
    RETURNING * INTO added;
    -- running workers sleep until the next firing they knew of
    PERFORM pg_notify('hopper_jobs', 'schedules');
    RETURN added;
END
$$;

-- Removes a schedule; whether there was one. Jobs it enqueued stay.
CREATE OR REPLACE FUNCTION hopper.remove_schedule(name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._check_required('remove_schedule', 'name', name IS NULL);
    DELETE FROM hopper._schedules AS s WHERE s.name = remove_schedule.name;
    RETURN found;
END
$$;

-- Enqueues what each schedule owes up to now: its latest firing since the
-- last one enqueued, on time, and earlier ones within backfill of now,
-- marked backfilled. Only schedules whose next firing is due are read (by
-- the index on next_fire_at). Each is locked while it is done and skipped
-- when another caller holds it, so a firing is enqueued once however many
-- workers call this at once. A schedule whose jobs cannot be added (say its
-- payload outgrew max_payload_bytes) gets a WARNING and is tried again at
-- the next call; the others go on. Returns the jobs added.
CREATE OR REPLACE FUNCTION hopper.enqueue_due_schedules(now timestamptz DEFAULT now())
RETURNS SETOF hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upto timestamptz := enqueue_due_schedules.now;
    schedule hopper._schedules;
BEGIN
    PERFORM hopper._check_required('enqueue_due_schedules', 'now', upto IS NULL);
    FOR schedule IN
        SELECT * FROM hopper._schedules AS s
        WHERE s.next_fire_at <= upto
        ORDER BY s.name
        FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            RETURN QUERY SELECT * FROM hopper._enqueue_firings(schedule, upto);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'enqueue_due_schedules: schedule "%" enqueued nothing: %',
                schedule.name, sqlerrm;
        END;
    END LOOP;
END
$$;

-- When a schedule fires next, after now: the earliest next_fire_at ahead,
-- or NULL when none is. A worker sleeps until then to enqueue it on time; a
-- firing already due but not enqueued (its jobs could not be added) is
-- tried again at the worker's regular interval instead.
CREATE OR REPLACE FUNCTION hopper.next_schedule_firing()
RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT min(s.next_fire_at) FROM hopper._schedules AS s WHERE s.next_fire_at > now());
END
$$;

-- One schedule's part of enqueue_due_schedules: adds the jobs of its due
-- firings and records the latest.
CREATE OR REPLACE FUNCTION hopper._enqueue_firings(
    schedule hopper._schedules, upto timestamptz
) RETURNS SETOF hopper.added_job
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parsed jsonb := hopper._cron_parse('enqueue_due_schedules', schedule.cron);
    after timestamptz := coalesce(schedule.last_fired_at, schedule.created_at);
    latest timestamptz := hopper._cron_latest(parsed, schedule.timezone, after, upto);
BEGIN
    IF latest IS NULL THEN
        -- next_fire_at was only a bound: set by migration 0015, or by time
        -- zone rules that have changed since
        UPDATE hopper._schedules AS s SET next_fire_at = hopper._cron_next(
            parsed, schedule.timezone, after
        )
        WHERE s.name = schedule.name;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM hopper.add_jobs(
        coalesce((
            SELECT jsonb_agg(hopper._firing_spec(schedule, f.at, true) ORDER BY f.at)
            FROM hopper._cron_firings(
                parsed, schedule.timezone,
                greatest(after, upto - schedule.backfill - interval '1 minute'), latest
            ) AS f (at)
            WHERE f.at >= upto - schedule.backfill AND f.at < latest
        ), '[]') || jsonb_build_array(hopper._firing_spec(schedule, latest, false))
    );
    UPDATE hopper._schedules AS s SET last_fired_at = latest
    WHERE s.name = schedule.name;
END
$$;
