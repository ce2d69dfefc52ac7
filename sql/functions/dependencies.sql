-- Dependencies (SPEC.md 3.4). A job added with depends_on or depends_on_tags
-- is stored 'waiting' until every job in depends_on has completed and no
-- other active job holds all of depends_on_tags; it is cancelled when a job
-- it depends on fails or is cancelled. A prerequisite that no longer exists
-- counts as completed: failing or cancelling one cancels its dependents at
-- once, so only a completed job (completed_retention 0) or one pruned after
-- that can be missing.
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

-- Rejects batch references that make a cycle. A cycle has a reference to
-- the spec itself or to a later one, so only those are followed.
CREATE OR REPLACE FUNCTION hopper._check_batch_cycles(
    fn text, specs hopper.job_spec[], name_index boolean
) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cyclic integer;
BEGIN
    WITH RECURSIVE reference (source, target) AS (
        SELECT g.i, -d.ref
        FROM generate_subscripts(specs, 1) AS g (i)
        CROSS JOIN LATERAL unnest(specs[g.i].depends_on) AS d (ref)
        WHERE d.ref < 0
    ),

    reach (start, node) AS (
        SELECT r.source, r.target FROM reference AS r WHERE r.target >= r.source
        UNION
        SELECT reach.start, r.target
        FROM reach INNER JOIN reference AS r ON reach.node = r.source
    )

    SELECT min(reach.start) INTO cyclic FROM reach WHERE reach.node = reach.start;
    IF cyclic IS NOT NULL THEN
        PERFORM hopper._raise(fn, '22023', CASE
            WHEN name_index THEN format('spec at index %s: ', cyclic - 1)
            ELSE ''
        END || 'depends_on makes a dependency cycle through batch references');
    END IF;
END
$$;

-- What a waiting job should become now: 'cancelled' (message names the
-- prerequisite that failed or was cancelled), 'waiting', or 'ready'.
CREATE OR REPLACE FUNCTION hopper._waiting_verdict(
    waiter_id bigint, prerequisite_ids bigint[], barrier_tags text[],
    OUT verdict text, OUT message text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    blocker hopper._jobs;
BEGIN
    SELECT * INTO blocker FROM hopper._jobs AS p
    WHERE p.id = any(prerequisite_ids) AND p.state <> 'completed'
    ORDER BY p.state IN ('failed', 'cancelled') DESC, p.id
    LIMIT 1;
    IF blocker.state IN ('failed', 'cancelled') THEN
        verdict := 'cancelled';
        message := format('prerequisite job %s %s', blocker.id, blocker.state);
    ELSIF blocker.id IS NOT NULL OR EXISTS (
        SELECT FROM hopper._jobs AS holder
        WHERE holder.tags @> barrier_tags AND holder.id <> waiter_id
            AND holder.state IN ('waiting', 'scheduled', 'pending', 'running')
    ) THEN
        verdict := 'waiting';
    ELSE
        verdict := 'ready';
    END IF;
END
$$;

-- Decides the given waiting jobs (locked by the caller): releases the ready
-- ones, cancels those whose prerequisite failed. Returns the cancelled jobs
-- and their tags (jobs that ended in turn) and whether any became pending.
CREATE OR REPLACE FUNCTION hopper._settle_waiting(
    job_ids bigint[],
    OUT cancelled_ids bigint[], OUT cancelled_tags text[], OUT any_runnable boolean
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    WITH verdict AS (
        SELECT w.id, v.verdict, v.message
        FROM hopper._jobs AS w
        CROSS JOIN LATERAL hopper._waiting_verdict(w.id, w.depends_on, w.depends_on_tags) AS v
        WHERE w.id = any(job_ids) AND w.state = 'waiting'
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
-- ended jobs' tags. Every completion calls it: while no job waits, it costs
-- one probe of jobs_waiting (the GIN lookups of 100 ids cost a tenth of a
-- batch's claim and completion).
CREATE OR REPLACE FUNCTION hopper._settle_dependents(ended_ids bigint[], ended_tags text[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidates bigint[];
    settled record;
    any_runnable boolean := false;
BEGIN
    -- the finished_at test is jobs_waiting's predicate
    IF NOT EXISTS (
        SELECT FROM hopper._jobs AS w WHERE w.state = 'waiting' AND w.finished_at IS NULL
    ) THEN
        RETURN;
    END IF;
    LOOP
        -- found through the GIN indexes, locked in id order
        candidates := ARRAY(
            SELECT w.id FROM hopper._jobs AS w
            WHERE
                w.state = 'waiting'
                AND (w.depends_on && ended_ids OR w.depends_on_tags <@ ended_tags)
            ORDER BY w.id
            FOR UPDATE
        );
        EXIT WHEN cardinality(candidates) = 0;
        settled := hopper._settle_waiting(candidates);
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
-- prerequisite ids that do not exist.
CREATE OR REPLACE FUNCTION hopper._lock_prerequisites(job_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted bigint[] := ARRAY(
        SELECT DISTINCT p.id
        FROM hopper._jobs AS w
        CROSS JOIN LATERAL unnest(w.depends_on) AS p (id)
        WHERE w.id = any(job_ids) AND NOT p.id = any(job_ids)
    );
    found bigint[];
BEGIN
    -- in id order, as completions lock their jobs: no deadlock between them
    found := ARRAY(
        SELECT p.id FROM hopper._jobs AS p
        WHERE p.id = any(wanted)
        ORDER BY p.id
        FOR SHARE
    );
    PERFORM
    FROM hopper._jobs AS w
    INNER JOIN hopper._jobs AS holder
        ON
            holder.tags @> w.depends_on_tags AND holder.id <> w.id
            AND holder.state IN ('waiting', 'scheduled', 'pending', 'running')
    WHERE w.id = any(job_ids) AND w.depends_on_tags IS NOT NULL
    ORDER BY holder.id
    FOR SHARE OF holder;
    RETURN ARRAY(SELECT unnest(wanted) EXCEPT SELECT unnest(found));
END
$$;

-- Settles waiting jobs just stored or retried, once _lock_prerequisites has
-- locked what they wait for: a job whose prerequisite failed is cancelled
-- (and its dependents with it), a job with nothing to wait for is released.
CREATE OR REPLACE FUNCTION hopper._settle_held(job_ids bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settled record;
BEGIN
    settled := hopper._settle_waiting(job_ids);
    IF settled.cancelled_ids IS NOT NULL THEN
        PERFORM hopper._settle_dependents(settled.cancelled_ids, settled.cancelled_tags);
    END IF;
    IF settled.any_runnable THEN
        PERFORM hopper._notify_jobs();
    END IF;
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
    missing bigint[];
    culprit record;
BEGIN
    WITH last_applied AS (
        SELECT DISTINCT ON (ids[g.i])
            ids[g.i] AS id,
            ARRAY(
                SELECT CASE WHEN d.ref < 0 THEN ids[-d.ref] ELSE d.ref END
                FROM unnest(specs[g.i].depends_on) WITH ORDINALITY AS d (ref, k)
                ORDER BY d.k
            ) AS prerequisite_ids,
            specs[g.i].depends_on_tags AS barrier_tags
        FROM generate_subscripts(specs, 1) AS g (i)
        WHERE outcomes[g.i] <> 'deduped'
        ORDER BY ids[g.i], g.i DESC
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
    missing := hopper._lock_prerequisites(held);
    IF cardinality(missing) > 0 THEN
        SELECT g.i - 1 AS spec_index, m.id INTO culprit
        FROM generate_subscripts(specs, 1) AS g (i)
        CROSS JOIN unnest(missing) AS m (id)
        WHERE m.id = any(specs[g.i].depends_on)
        ORDER BY g.i, m.id
        LIMIT 1;
        PERFORM hopper._raise(fn, '23503', CASE
            WHEN name_index THEN format('spec at index %s: ', culprit.spec_index)
            ELSE ''
        END || format('depends_on names job %s, which does not exist', culprit.id));
    END IF;
    PERFORM hopper._settle_held(held);
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
