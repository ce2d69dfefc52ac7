-- Dependencies (SPEC.md 3.4). A job added with depends_on or depends_on_tags
-- is stored 'waiting' until every job in depends_on has completed and no
-- other active job holds all of depends_on_tags; it is cancelled when a job
-- it depends on fails or is cancelled. A prerequisite that no longer exists
-- counts as completed: failing or cancelling one cancels its dependents at
-- once, so only a completed job (completed_retention 0) or one pruned after
-- that can be missing.
--
-- A waiting job's edges in _job_dependencies, one per unfinished
-- prerequisite, let a job that ends find its dependents; they are deleted
-- when that prerequisite ends. The waiting job's own row decides (a replace
-- or a cancel can leave an edge to a job that no longer waits on it).
--
-- Two lock rules keep a waiting job from being stranded by a job that ends
-- while it is added:
-- * the producer locks the prerequisites and barrier holders it finds FOR
--   SHARE before it decides, so a job that ends meanwhile is seen ended, and
--   one that ends later waits for the producer's commit and then sees the
--   waiting job;
-- * a job's end locks the waiting jobs it may release FOR UPDATE and decides
--   in a later statement, whose snapshot holds every end committed before
--   the lock was granted. Of two prerequisites ending at once, the second to
--   get the lock sees the first, so one of them releases the job.
-- The producer never waits holding these locks, so the two cannot deadlock
-- (_lock_prerequisites).

-- Rejects batch references that make a cycle: a depth-first walk over the
-- references (O(specs + references)). Only a reference to the spec itself or
-- to a later one can close a cycle, so batches without one skip the walk.
CREATE OR REPLACE FUNCTION hopper._check_batch_cycles(
    fn text, specs hopper.job_spec[], name_index boolean
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    spec_count integer := cardinality(specs);
    target integer[];          -- the referenced spec of each reference, by source
    first_ref integer[];       -- where each spec's references start in target
    colour integer[];          -- 0 unseen, 1 on the walk's path, 2 done
    path integer[];
    next_ref integer[];
    depth integer;
    node integer;
    cyclic integer;
BEGIN
    IF NOT EXISTS (
        SELECT FROM unnest(specs) WITH ORDINALITY AS s (
            identifier, payload, queue_name, run_at, max_attempts, job_key, priority, flags,
            job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff, backoff_delay,
            backoff_max, dead_letter, n
        )
        CROSS JOIN LATERAL unnest(s.depends_on) AS d (ref)
        WHERE -d.ref >= s.n
    ) THEN
        RETURN;
    END IF;
    -- references as 1-based spec numbers, grouped by source
    WITH reference AS (
        SELECT s.n::integer AS source, (-d.ref)::integer AS target, d.k
        FROM unnest(specs) WITH ORDINALITY AS s (
            identifier, payload, queue_name, run_at, max_attempts, job_key, priority, flags,
            job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff, backoff_delay,
            backoff_max, dead_letter, n
        )
        CROSS JOIN LATERAL unnest(s.depends_on) WITH ORDINALITY AS d (ref, k)
        WHERE d.ref < 0
    ),

    per_source AS (
        SELECT r.source, count(*) AS refs FROM reference AS r GROUP BY r.source
    )

    SELECT
        ARRAY(SELECT r.target FROM reference AS r ORDER BY r.source, r.k),
        ARRAY(
            SELECT (1 + coalesce(sum(p.refs) OVER (
                ORDER BY g.i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ), 0))::integer
            FROM generate_series(1, spec_count + 1) AS g (i)
            LEFT JOIN per_source AS p ON g.i = p.source
            ORDER BY g.i
        )
    INTO target, first_ref;
    colour := array_fill(0, ARRAY[spec_count]);
    <<walks>>
    FOR start IN 1..spec_count LOOP
        CONTINUE WHEN colour[start] <> 0 OR first_ref[start] = first_ref[start + 1];
        depth := 1;
        path[1] := start;
        next_ref[1] := first_ref[start];
        colour[start] := 1;
        WHILE depth > 0 LOOP
            node := path[depth];
            IF next_ref[depth] = first_ref[node + 1] THEN
                colour[node] := 2;
                depth := depth - 1;
                CONTINUE;
            END IF;
            node := target[next_ref[depth]];
            next_ref[depth] := next_ref[depth] + 1;
            IF colour[node] = 1 THEN
                cyclic := node;
                EXIT walks;
            ELSIF colour[node] = 0 THEN
                colour[node] := 1;
                depth := depth + 1;
                path[depth] := node;
                next_ref[depth] := first_ref[node];
            END IF;
        END LOOP;
    END LOOP;
    IF cyclic IS NOT NULL THEN
        PERFORM hopper._raise(fn, '22023', CASE
            WHEN name_index THEN format('spec at index %s: ', cyclic - 1)
            ELSE ''
        END || 'depends_on makes a dependency cycle through batch references');
    END IF;
END
$$;

-- Decides the given waiting jobs (locked by the caller): releases the ready
-- ones, cancels those whose prerequisite failed. Returns the cancelled jobs
-- and their tags (jobs that ended in turn) and whether any became pending.
CREATE OR REPLACE FUNCTION hopper._settle_waiting(
    job_ids bigint[], holders bigint[],
    OUT cancelled_ids bigint[], OUT cancelled_tags text[], OUT any_runnable boolean
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- one set-based pass (a function call per job cost half of adding a
    -- batch of dependents): the first unfinished prerequisite, failed or
    -- cancelled ones first, then the barrier's holders if none
    WITH blocked AS (
        SELECT w.id, w.depends_on_tags, b.id AS blocker_id, b.state AS blocker_state
        FROM hopper._jobs AS w
        LEFT JOIN LATERAL (
            SELECT p.id, p.state FROM hopper._jobs AS p
            WHERE p.id = any(w.depends_on) AND p.state <> 'completed'
            ORDER BY p.state IN ('failed', 'cancelled') DESC, p.id
            LIMIT 1
        ) AS b ON true
        WHERE w.id = any(job_ids) AND w.state = 'waiting'
    ),

    verdict AS (
        SELECT
            k.id,
            CASE
                WHEN k.blocker_state IN ('failed', 'cancelled') THEN 'cancelled'
                WHEN k.blocker_id IS NOT NULL THEN 'waiting'
                WHEN k.depends_on_tags IS NOT NULL AND EXISTS (
                    SELECT FROM hopper._jobs AS holder
                    WHERE holder.tags @> k.depends_on_tags AND holder.id <> k.id
                        AND holder.state IN ('waiting', 'scheduled', 'pending', 'running')
                        AND (holders IS NULL OR holder.id = any(holders))
                ) THEN 'waiting'
                ELSE 'ready'
            END AS verdict,
            CASE
                WHEN k.blocker_state IN ('failed', 'cancelled')
                    THEN format('prerequisite job %s %s', k.blocker_id, k.blocker_state)
            END AS message
        FROM blocked AS k
    ),

    settled AS (
        UPDATE hopper._jobs AS j SET
            state = CASE
                WHEN v.verdict = 'cancelled' THEN 'cancelled'
                WHEN j.run_at > now() THEN 'scheduled'
                ELSE 'pending'
            END,
            last_error = coalesce(v.message, j.last_error),
            finished_at = CASE WHEN v.verdict = 'cancelled' THEN now() END,
            updated_at = now()
        FROM verdict AS v
        WHERE j.id = v.id AND v.verdict <> 'waiting'
        RETURNING j.id, j.state, j.tags
    )

    SELECT
        array_agg(s.id) FILTER (WHERE s.state = 'cancelled'),
        (
            SELECT array_agg(DISTINCT t.tag)
            FROM settled AS c CROSS JOIN LATERAL unnest(c.tags) AS t (tag)
            WHERE c.state = 'cancelled'
        ),
        coalesce(bool_or(s.state = 'pending'), false)
    INTO cancelled_ids, cancelled_tags, any_runnable
    FROM settled AS s;
END
$$;

-- Called after jobs ended (completed, failed, cancelled): settles the
-- waiting jobs that depend on them or whose barrier tags they held, and in
-- turn the dependents of those it cancels. ended_tags is the union of the
-- ended jobs' tags; within, when given, limits the jobs settled to those,
-- and holders the barrier holders they may wait for (see _settle_held).
-- Every completion calls it: while no job waits on another, the first test
-- reads one page (4 us a call; the DELETE's lookup of 100 ids took 22).
--
-- Each level of a cascade is locked in id order, but one cascade's first
-- level can be another's second when their graphs overlap, so two can lock
-- the same jobs in opposite orders. The deadlock detector then aborts one;
-- leaving the block undoes all that cascade locked and changed, the other
-- goes on, and this one starts again behind it. A deadlock over locks taken
-- before the cascade (earlier in the caller's transaction) would only come
-- back, so the third is raised.
CREATE OR REPLACE FUNCTION hopper._settle_dependents(
    ended_ids bigint[], ended_tags text[],
    within bigint[] DEFAULT NULL, holders bigint[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF ended_tags IS NULL AND NOT EXISTS (SELECT FROM hopper._job_dependencies) THEN
        RETURN;
    END IF;
    FOR attempt IN 1..3 LOOP
        BEGIN
            PERFORM hopper._cascade_to_dependents(ended_ids, ended_tags, within, holders);
            RETURN;
        EXCEPTION WHEN deadlock_detected THEN
            IF attempt = 3 THEN
                RAISE;
            END IF;
            -- locks our rollback freed are taken without a queue: the other
            -- side, woken, must get them before we try again
            PERFORM pg_sleep(0.05 * attempt);
        END;
    END LOOP;
END
$$;

-- _settle_dependents' cascade, level by level.
CREATE OR REPLACE FUNCTION hopper._cascade_to_dependents(
    ended_ids bigint[], ended_tags text[], within bigint[], holders bigint[]
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dependents bigint[];
    candidates bigint[];
    settled record;
    any_runnable boolean := false;
BEGIN
    LOOP
        -- an ended job's edges are spent whatever becomes of its dependents
        -- (within: those to the jobs settled here; see _hold_dependents)
        WITH spent AS (
            DELETE FROM hopper._job_dependencies AS d
            WHERE d.prerequisite_id = any(ended_ids) AND (within IS NULL OR d.job_id = any(within))
            RETURNING d.job_id
        )

        SELECT array_agg(s.job_id) INTO dependents FROM spent AS s;
        EXIT WHEN dependents IS NULL AND ended_tags IS NULL;
        -- locked in id order; barrier waiters through jobs_waiting_on_tags
        candidates := ARRAY(
            SELECT w.id FROM hopper._jobs AS w
            WHERE
                w.state = 'waiting'
                AND (w.id = any(dependents) OR w.depends_on_tags <@ ended_tags)
                AND (within IS NULL OR w.id = any(within))
            ORDER BY w.id
            FOR UPDATE
        );
        EXIT WHEN cardinality(candidates) = 0;
        settled := hopper._settle_waiting(candidates, holders);
        any_runnable := any_runnable OR settled.any_runnable;
        EXIT WHEN settled.cancelled_ids IS NULL;
        ended_ids := settled.cancelled_ids;
        ended_tags := settled.cancelled_tags;
    END LOOP;
    IF any_runnable THEN
        PERFORM hopper._notify_jobs();
    END IF;
END
$$;

-- For waiting jobs just stored (or retried): locks FOR SHARE the jobs they
-- depend on and the active jobs holding their barrier tags. Returns the
-- prerequisite ids that do not exist, and the holders locked: the waiting
-- jobs are decided against those only, since a holder committed after this
-- lock could end, unlocked, before the producer commits.
--
-- A job's end holds its row and then locks the waiting jobs it settles; a
-- producer that held one of those (a waiting prerequisite or holder) while
-- it waited for the ended row would deadlock with it. So the producer never
-- waits holding any of these locks: it takes them all NOWAIT, and when one
-- is taken, it lets go of the others and waits for that one alone.
CREATE OR REPLACE FUNCTION hopper._lock_prerequisites(
    job_ids bigint[], OUT missing bigint[], OUT holders bigint[]
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted bigint[] := ARRAY(
        SELECT p.id
        FROM hopper._jobs AS w
        CROSS JOIN LATERAL unnest(w.depends_on) AS p (id)
        WHERE w.id = any(job_ids)
        EXCEPT
        SELECT unnest(job_ids)
    );
    -- a holder committed after this read is later than the new jobs
    candidates bigint[] := ARRAY(
        SELECT DISTINCT holder.id
        FROM hopper._jobs AS w
        INNER JOIN hopper._jobs AS holder
            ON
                holder.tags @> w.depends_on_tags AND holder.id <> w.id
                AND holder.state IN ('waiting', 'scheduled', 'pending', 'running')
        WHERE w.id = any(job_ids) AND w.depends_on_tags IS NOT NULL
    );
    found bigint[];
BEGIN
    LOOP
        BEGIN
            found := ARRAY(
                SELECT p.id FROM hopper._jobs AS p
                WHERE p.id = any(wanted)
                ORDER BY p.id
                FOR SHARE NOWAIT
            );
            -- state and tags tested again on the row locked
            holders := ARRAY(
                SELECT holder.id FROM hopper._jobs AS holder
                WHERE
                    holder.id = any(candidates)
                    AND holder.state IN ('waiting', 'scheduled', 'pending', 'running')
                    AND EXISTS (
                        SELECT FROM hopper._jobs AS w
                        WHERE w.id = any(job_ids) AND w.id <> holder.id
                            AND holder.tags @> w.depends_on_tags
                    )
                ORDER BY holder.id
                FOR SHARE OF holder NOWAIT
            );
            missing := ARRAY(SELECT unnest(wanted) EXCEPT SELECT unnest(found));
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            -- the attempt's locks went with its subtransaction
            PERFORM hopper._wait_for_a_locked_job(wanted || candidates);
        END;
    END LOOP;
END
$$;

-- Waits until the first of the given jobs that another transaction has
-- locked is free, holding no lock on any of them meanwhile or after. Each
-- subtransaction below ends in an error of its own, whose rollback drops
-- the locks it took.
CREATE OR REPLACE FUNCTION hopper._wait_for_a_locked_job(job_ids bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate_id bigint;
    blocked bigint;
BEGIN
    BEGIN
        FOR candidate_id IN SELECT DISTINCT c.id FROM unnest(job_ids) AS c (id) ORDER BY c.id LOOP
            BEGIN
                PERFORM FROM hopper._jobs AS j WHERE j.id = candidate_id FOR SHARE NOWAIT;
            EXCEPTION WHEN lock_not_available THEN
                blocked := candidate_id;
                EXIT;
            END;
        END LOOP;
        RAISE EXCEPTION 'release the probes' USING ERRCODE = 'HPR01';
    EXCEPTION WHEN SQLSTATE 'HPR01' THEN
        NULL;
    END;
    IF blocked IS NOT NULL THEN
        BEGIN
            PERFORM FROM hopper._jobs AS j WHERE j.id = blocked FOR SHARE;
            RAISE EXCEPTION 'release the wait' USING ERRCODE = 'HPR01';
        EXCEPTION WHEN SQLSTATE 'HPR01' THEN
            NULL;
        END;
    END IF;
END
$$;

-- Settles waiting jobs just stored or retried, once _lock_prerequisites has
-- locked what they wait for: a job whose prerequisite failed is cancelled
-- (and its dependents with it), a job with nothing to wait for is released.
CREATE OR REPLACE FUNCTION hopper._settle_held(job_ids bigint[], holders bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settled record;
BEGIN
    settled := hopper._settle_waiting(job_ids, coalesce(holders, '{}'));
    -- their prerequisites are locked (or ours), so none ends before this
    -- commits, and each ending then finds its edges
    INSERT INTO hopper._job_dependencies (prerequisite_id, job_id)
    SELECT DISTINCT p.id, w.id
    FROM hopper._jobs AS w
    CROSS JOIN LATERAL unnest(w.depends_on) AS d (id)
    INNER JOIN hopper._jobs AS p ON d.id = p.id
    WHERE w.id = any(job_ids) AND w.state = 'waiting' AND p.state <> 'completed'
    ON CONFLICT DO NOTHING;
    IF settled.cancelled_ids IS NOT NULL THEN
        -- only jobs of this call can wait on them: no other transaction saw
        -- them active (a retried job's dependents were cancelled when it
        -- ended), and locking other waiting jobs here could deadlock
        PERFORM hopper._settle_dependents(
            settled.cancelled_ids, settled.cancelled_tags, job_ids, coalesce(holders, '{}')
        );
    END IF;
    IF settled.any_runnable THEN
        PERFORM hopper._notify_jobs();
    END IF;
END
$$;

-- Two transactions can each add one half of a cycle through a tag barrier
-- that neither check sees: a waiting barrier and a waiting holder of its
-- tags, made at once. So a call storing waiting jobs takes, until it
-- commits, an advisory lock per tag: shared for each tag a waiting job of
-- it holds, exclusive for each tag a barrier of it waits on. A barrier and
-- a waiting holder of its tags are then made one after the other, and the
-- second's check sees the first; holders of one tag never wait for each
-- other. Taken in key order, before the call locks any job, so lockers of
-- several tags cannot deadlock here.
CREATE OR REPLACE FUNCTION hopper._lock_barrier_tags(held_tags text[], barrier_tags text[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- one class of advisory keys per schema (the migrator renames it)
    tag_class integer := hashtext('hopper.barrier_tags');
    tag_lock record;
BEGIN
    FOR tag_lock IN
        SELECT hashtext(t.tag) AS key, bool_or(t.exclusive) AS exclusive
        FROM (
            SELECT h.tag, false FROM unnest(held_tags) AS h (tag)
            UNION ALL
            SELECT b.tag, true FROM unnest(barrier_tags) AS b (tag)
        ) AS t (tag, exclusive)
        GROUP BY 1
        ORDER BY 1
    LOOP
        IF tag_lock.exclusive THEN
            PERFORM pg_advisory_xact_lock(tag_class, tag_lock.key);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(tag_class, tag_lock.key);
        END IF;
    END LOOP;
END
$$;

-- The tags _lock_barrier_tags takes for specs: those held by the jobs that
-- wait, and those barriers wait on. Distinct tag sets first: a large batch
-- mostly repeats a few.
CREATE OR REPLACE FUNCTION hopper._spec_barrier_tags(
    specs hopper.job_spec[], OUT held_tags text[], OUT barrier_tags text[]
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT
        array_agg(DISTINCT h.tag) FILTER (WHERE NOT h.barrier),
        array_agg(DISTINCT h.tag) FILTER (WHERE h.barrier)
    INTO held_tags, barrier_tags
    FROM (
        SELECT DISTINCT
            s.tags,
            s.depends_on_tags,
            cardinality(s.depends_on) > 0 OR cardinality(s.depends_on_tags) > 0 AS waits
        FROM unnest(specs) AS s
    ) AS d
    CROSS JOIN LATERAL (
        SELECT t.tag, false FROM unnest(d.tags) AS t (tag) WHERE d.waits
        UNION ALL
        SELECT t.tag, true FROM unnest(d.depends_on_tags) AS t (tag)
    ) AS h (tag, barrier);
END
$$;

-- The least of the origins that waits for itself, or NULL: walks from each
-- (origin, start) pair through what each waiting job waits for, its
-- prerequisites and the waiting jobs holding its barrier's tags. A pair
-- whose start is its origin begins with what the origin waits for.
CREATE OR REPLACE FUNCTION hopper._cycle_origin(origins bigint[], starts bigint[])
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cyclic bigint;
BEGIN
    WITH RECURSIVE reached (origin, id, moved) AS (
        SELECT s.origin, s.id, s.origin <> s.id
        FROM unnest(origins, starts) AS s (origin, id)
        UNION
        -- Each job is looked up by id, row by row: the LIMIT keeps the
        -- planner from turning the lookup into a join, which it planned on
        -- guessed sizes (a hash of every waiting job, or a scan of them for
        -- each row)
        SELECT r.origin, awaited.id, true
        FROM reached AS r
        CROSS JOIN LATERAL (
            SELECT w.id, w.depends_on, w.depends_on_tags FROM hopper._jobs AS w
            WHERE w.id = r.id AND w.state = 'waiting'
            LIMIT 1
        ) AS w
        CROSS JOIN LATERAL (
            SELECT p.id FROM unnest(w.depends_on) AS p (id)
            UNION ALL
            SELECT holder.id FROM hopper._jobs AS holder
            WHERE
                -- tested first, once per job: no scan without a barrier
                w.depends_on_tags IS NOT NULL
                AND holder.tags @> w.depends_on_tags AND holder.id <> w.id
                AND holder.state = 'waiting'
        ) AS awaited
        WHERE NOT r.moved OR r.id <> r.origin
    )

    SELECT min(r.origin) INTO cyclic
    FROM reached AS r
    WHERE r.moved AND r.id = r.origin;
    RETURN cyclic;
END
$$;

-- A job-key replace gives an existing job new prerequisites or a new
-- barrier, and other waiting jobs may already wait for it: a cycle no batch
-- reference shows. Walks from the replaced jobs through what they wait for,
-- barriers included (their ancestry, not every waiting job).
CREATE OR REPLACE FUNCTION hopper._check_replaced_cycles(fn text, replaced_ids bigint[])
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cyclic bigint := hopper._cycle_origin(replaced_ids, replaced_ids);
BEGIN
    IF cyclic IS NOT NULL THEN
        PERFORM hopper._raise(fn, '22023', format(
            '%s makes a dependency cycle: job %s would wait for itself',
            (
                SELECT CASE WHEN j.depends_on IS NULL THEN 'depends_on_tags' ELSE 'depends_on' END
                FROM hopper._jobs AS j WHERE j.id = cyclic
            ),
            cyclic
        ));
    END IF;
END
$$;

-- Refuses a call that closes a cycle through a tag barrier: a job it leaves
-- waiting would wait, through other waiting jobs and barriers, for itself.
-- Into a new job of the call only a barrier can lead (id cycles are found by
-- _check_batch_cycles, and cycles into a replaced job by
-- _check_replaced_cycles), so every such cycle runs through a waiting
-- barrier job whose tags one of the call's jobs holds: the walk starts from
-- those and looks for a way back. ids: each spec's job, NULL for one that
-- changed nothing.
CREATE OR REPLACE FUNCTION hopper._check_barrier_cycles(
    fn text, specs hopper.job_spec[], ids bigint[], name_index boolean
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    barriers bigint[];
    holders bigint[];
    cyclic bigint;
BEGIN
    -- the common case, no waiting barrier over the call's tags: one probe
    -- per distinct set of tags, not per spec
    IF NOT EXISTS (
        SELECT
        FROM (
            SELECT DISTINCT s.tags FROM unnest(specs) AS s
            WHERE
                cardinality(s.tags) > 0
                AND (cardinality(s.depends_on) > 0 OR cardinality(s.depends_on_tags) > 0)
        ) AS t
        INNER JOIN hopper._jobs AS b
            ON b.depends_on_tags <@ t.tags AND b.state = 'waiting'
    ) THEN
        RETURN;
    END IF;
    -- from each waiting barrier job to the call's waiting jobs holding its
    -- tags (an old holder could only lead back through a cycle already
    -- there); one probe of the barriers per job
    SELECT array_agg(b.id), array_agg(n.id) INTO barriers, holders
    FROM unnest(ids) AS c (id)
    CROSS JOIN LATERAL (
        SELECT n.id, n.tags FROM hopper._jobs AS n
        WHERE n.id = c.id AND n.state = 'waiting' AND n.tags IS NOT NULL
        LIMIT 1
    ) AS n
    CROSS JOIN LATERAL (
        SELECT b.id FROM hopper._jobs AS b
        WHERE
            b.depends_on_tags <@ n.tags AND b.id <> n.id
            AND b.state = 'waiting'
    ) AS b;
    cyclic := hopper._cycle_origin(barriers, holders);
    IF cyclic IS NOT NULL THEN
        PERFORM hopper._raise(fn, '22023', format(
            'tags make a dependency cycle: %s would wait for itself through its tag barrier',
            CASE
                WHEN name_index AND cyclic = any(ids)
                    THEN format('the job of spec %s', array_position(ids, cyclic) - 1)
                ELSE format('job %s', cyclic)
            END
        ));
    END IF;
END
$$;

-- add_job and add_jobs for specs with dependencies among them: the id and
-- outcome of each, in input order. With job keys they go through
-- _apply_specs and get their dependencies stored afterwards; without, in
-- one INSERT (_apply_specs would pick unkeyed specs out one by one).
CREATE OR REPLACE FUNCTION hopper._apply_dependent_specs(
    fn text, specs hopper.job_spec[], name_index boolean,
    OUT ids bigint[], OUT outcomes text[]
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    any_keyed boolean;
    any_queued boolean;
    any_due boolean;
    any_tagged_waiting boolean;
    any_barrier boolean;
BEGIN
    PERFORM hopper._check_batch_cycles(fn, specs, name_index);
    SELECT
        bool_or(s.job_key IS NOT NULL),
        bool_or(s.queue_name IS NOT NULL),
        bool_or(
            coalesce(s.run_at, now()) <= now()
            AND coalesce(cardinality(s.depends_on), 0) = 0
            AND coalesce(cardinality(s.depends_on_tags), 0) = 0
        ),
        bool_or(
            cardinality(s.tags) > 0
            AND (cardinality(s.depends_on) > 0 OR cardinality(s.depends_on_tags) > 0)
        ),
        bool_or(cardinality(s.depends_on_tags) > 0)
    INTO any_keyed, any_queued, any_due, any_tagged_waiting, any_barrier
    FROM unnest(specs) AS s;
    IF any_tagged_waiting OR any_barrier THEN
        PERFORM hopper._lock_barrier_tags(l.held_tags, l.barrier_tags)
        FROM hopper._spec_barrier_tags(specs) AS l;
    END IF;
    IF any_keyed THEN
        FOR attempt IN 1..3 LOOP
            BEGIN
                SELECT a.ids, a.outcomes INTO ids, outcomes FROM hopper._apply_specs(specs) AS a;
                PERFORM hopper._refuse_unborn_prerequisites(fn, specs, ids, outcomes, name_index);
                PERFORM hopper._hold_dependents(fn, specs, ids, outcomes, name_index);
                EXIT;
            EXCEPTION WHEN deadlock_detected THEN
                -- a replaced job is locked from its replace on, so waiting for
                -- its prerequisites can deadlock with their end, whose cascade
                -- wants it: undoing the call's part lets that end go on, and
                -- the call is applied again behind it (locks taken before the
                -- call would only deadlock again, so the third is raised)
                IF attempt = 3 THEN
                    RAISE;
                END IF;
                PERFORM pg_sleep(0.05 * attempt);
            END;
        END LOOP;
        IF any_tagged_waiting THEN
            PERFORM hopper._check_barrier_cycles(fn, specs, ARRAY(
                SELECT CASE WHEN x.outcome <> 'deduped' THEN x.id END
                FROM unnest(ids, outcomes) WITH ORDINALITY AS x (id, outcome, n)
                ORDER BY x.n
            ), name_index);
        END IF;
        RETURN;
    END IF;
    IF any_queued THEN
        PERFORM hopper._ensure_spec_queues(specs);
    END IF;
    ids := hopper._insert_dependent_jobs(specs);
    outcomes := array_fill('inserted'::text, ARRAY[cardinality(specs)]);
    PERFORM hopper._refuse_unborn_prerequisites(fn, specs, ids, outcomes, name_index);
    PERFORM hopper._hold_waiting(fn, specs, ARRAY(
        SELECT x.id FROM unnest(specs, ids) AS x (
            identifier, payload, queue_name, run_at, max_attempts, job_key, priority,
            flags, job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff,
            backoff_delay, backoff_max, dead_letter, id
        )
        WHERE cardinality(x.depends_on) > 0 OR cardinality(x.depends_on_tags) > 0
        ORDER BY x.id
    ), name_index);
    IF any_tagged_waiting THEN
        PERFORM hopper._check_barrier_cycles(fn, specs, ids, name_index);
    END IF;
    IF any_due THEN
        PERFORM hopper._notify_jobs();
    END IF;
END
$$;

-- Inserts unkeyed specs, some with dependencies, in spec order, and returns
-- their ids in that order. The ids are drawn from the identity sequence
-- first, so batch references resolve in the INSERT and a dependent is
-- stored waiting with its prerequisites at once (updating it afterwards cost
-- 85 ms of 10,000 dependents). The caller holds the waiting ones.
CREATE OR REPLACE FUNCTION hopper._insert_dependent_jobs(specs hopper.job_spec[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids bigint[] := ARRAY(
        SELECT nextval(pg_get_serial_sequence('hopper._jobs', 'id'))
        FROM generate_series(1, cardinality(specs))
    );
BEGIN
    INSERT INTO hopper._jobs AS i (
        id, task_identifier, payload, queue_name, state, priority, run_at,
        max_attempts, key, flags, tags, depends_on, depends_on_tags, timeout,
        backoff, backoff_delay, backoff_max, dead_letter
    )
    OVERRIDING SYSTEM VALUE
    SELECT
        s.id,
        s.identifier,
        coalesce(s.payload, '{}'),
        s.queue_name,
        CASE
            WHEN cardinality(s.depends_on) > 0 OR cardinality(s.depends_on_tags) > 0
                THEN 'waiting'
            WHEN s.run_at > now() THEN 'scheduled'
            ELSE 'pending'
        END,
        coalesce(s.priority, 0),
        coalesce(s.run_at, now()),
        coalesce(s.max_attempts, 25),
        s.job_key,
        s.flags,
        s.tags,
        nullif(ARRAY(
            SELECT CASE WHEN d.ref < 0 THEN ids[-d.ref] ELSE d.ref END
            FROM unnest(s.depends_on) WITH ORDINALITY AS d (ref, k)
            ORDER BY d.k
        ), '{}'),
        nullif(s.depends_on_tags, '{}'),
        s.timeout,
        s.backoff,
        s.backoff_delay,
        s.backoff_max,
        s.dead_letter
    FROM unnest(specs, ids) WITH ORDINALITY AS s (
        identifier, payload, queue_name, run_at, max_attempts, job_key, priority, flags,
        job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff, backoff_delay,
        backoff_max, dead_letter, id, n
    )
    ORDER BY s.n;
    RETURN ids;
END
$$;

-- After _apply_specs: stores each applied spec's dependencies on its job
-- (batch references resolved to the ids of their specs) and settles those
-- jobs. The last spec applied to a job decides its dependencies. An id that
-- does not exist raises 23503 and changes nothing.
CREATE OR REPLACE FUNCTION hopper._hold_dependents(
    fn text, specs hopper.job_spec[], ids bigint[], outcomes text[], name_index boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held bigint[];
    replaced bigint[];
BEGIN
    WITH last_applied AS (
        SELECT DISTINCT ON (a.id)
            a.id,
            ARRAY(
                SELECT CASE WHEN d.ref < 0 THEN ids[-d.ref] ELSE d.ref END
                FROM unnest(a.depends_on) WITH ORDINALITY AS d (ref, k)
                ORDER BY d.k
            ) AS prerequisite_ids,
            a.depends_on_tags AS barrier_tags
        -- unnest, not specs[i]: finding an element of an array of composites
        -- walks the array from its start
        FROM unnest(specs, ids, outcomes) WITH ORDINALITY AS a (
            identifier, payload, queue_name, run_at, max_attempts, job_key, priority, flags,
            job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff, backoff_delay,
            backoff_max, dead_letter, id, outcome, n
        )
        WHERE a.outcome <> 'deduped'
        ORDER BY a.id, a.n DESC
    ),

    stored AS (
        UPDATE hopper._jobs AS j SET
            depends_on = nullif(a.prerequisite_ids, '{}'),
            depends_on_tags = nullif(a.barrier_tags, '{}'),
            state = 'waiting'
        FROM last_applied AS a
        WHERE
            j.id = a.id
            AND (cardinality(a.prerequisite_ids) > 0 OR cardinality(a.barrier_tags) > 0)
        RETURNING j.id
    )

    SELECT array_agg(s.id ORDER BY s.id) INTO held FROM stored AS s;
    IF held IS NULL THEN
        RETURN;
    END IF;
    -- the waiting jobs that existed before the call (key replaces)
    replaced := ARRAY(
        SELECT x.id FROM unnest(ids, outcomes) AS x (id, outcome)
        WHERE x.outcome = 'updated' AND x.id = any(held)
    );
    IF cardinality(replaced) > 0 THEN
        PERFORM hopper._check_replaced_cycles(fn, replaced);
    END IF;
    PERFORM hopper._hold_waiting(fn, specs, held, name_index);
    IF cardinality(replaced) > 0 THEN
        -- _hold_waiting settles only this call's jobs, but a replaced job had
        -- been active for other calls too: if it ended here, theirs that wait
        -- on it (by id or by its tags) are settled as at any job's end
        PERFORM hopper._settle_dependents_of(ARRAY(
            SELECT j FROM hopper._jobs AS j WHERE j.id = any(replaced) AND j.state = 'cancelled'
        ));
    END IF;
END
$$;

-- Locks what the just stored waiting jobs held wait for, raises 23503 for a
-- prerequisite that does not exist (naming the first spec that gave it),
-- and settles them.
CREATE OR REPLACE FUNCTION hopper._hold_waiting(
    fn text, specs hopper.job_spec[], held bigint[], name_index boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    locked record := hopper._lock_prerequisites(held);
BEGIN
    IF cardinality(locked.missing) > 0 THEN
        PERFORM hopper._raise_missing(fn, specs, locked.missing, name_index);
    END IF;
    PERFORM hopper._settle_held(held, locked.holders);
END
$$;

-- A job this call inserted did not exist when the call was made, so a plain
-- id naming it (a spec's own, say, guessed from the sequence: the job would
-- wait on itself for good) names no job, as SPEC.md 3.4 has it; a batch
-- reference is the way to name one. Raises 23503 for the first such id.
CREATE OR REPLACE FUNCTION hopper._refuse_unborn_prerequisites(
    fn text, specs hopper.job_spec[], ids bigint[], outcomes text[], name_index boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unborn bigint[] := ARRAY(
        SELECT d.ref
        FROM unnest(specs) AS s
        CROSS JOIN LATERAL unnest(s.depends_on) AS d (ref)
        WHERE d.ref > 0 AND d.ref = any(ARRAY(
            SELECT x.id FROM unnest(ids, outcomes) AS x (id, outcome)
            WHERE x.outcome = 'inserted'
        ))
    );
BEGIN
    IF cardinality(unborn) > 0 THEN
        PERFORM hopper._raise_missing(fn, specs, unborn, name_index);
    END IF;
END
$$;

-- Raises 23503 for the first of missing (ids the specs' depends_on give) in
-- spec order, naming its spec when name_index.
CREATE OR REPLACE FUNCTION hopper._raise_missing(
    fn text, specs hopper.job_spec[], missing bigint[], name_index boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    culprit record;
BEGIN
    SELECT a.n - 1 AS spec_index, m.id INTO culprit
    FROM unnest(specs) WITH ORDINALITY AS a (
        identifier, payload, queue_name, run_at, max_attempts, job_key, priority, flags,
        job_key_mode, tags, depends_on, depends_on_tags, timeout, backoff, backoff_delay,
        backoff_max, dead_letter, n
    )
    CROSS JOIN unnest(missing) AS m (id)
    WHERE m.id = any(a.depends_on)
    ORDER BY a.n, m.id
    LIMIT 1;
    PERFORM hopper._raise(fn, '23503', CASE
        WHEN name_index THEN format('spec at index %s: ', culprit.spec_index)
        ELSE ''
    END || format('depends_on names job %s, which does not exist', culprit.id));
END
$$;

-- _settle_dependents for the finished jobs among changed rows.
CREATE OR REPLACE FUNCTION hopper._settle_dependents_of(changed hopper._jobs[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ended_ids bigint[];
    ended_tags text[];
BEGIN
    SELECT
        array_agg(c.id),
        (
            SELECT array_agg(DISTINCT t.tag)
            FROM unnest(changed) AS e CROSS JOIN LATERAL unnest(e.tags) AS t (tag)
            WHERE e.finished_at IS NOT NULL
        )
    INTO ended_ids, ended_tags
    FROM unnest(changed) AS c
    WHERE c.finished_at IS NOT NULL;
    IF ended_ids IS NOT NULL THEN
        PERFORM hopper._settle_dependents(ended_ids, ended_tags);
    END IF;
END
$$;
