-- Least privilege (SPEC.md section 7): roles get EXECUTE on named functions
-- and USAGE on the schema, never a privilege on hopper's tables.

CREATE OR REPLACE FUNCTION hopper._grant_functions(
    fn text, role_name text, function_names text[]
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema_oid oid := (SELECT c.relnamespace FROM pg_class AS c WHERE c.oid = 'hopper._jobs'::regclass);
    target regprocedure;
BEGIN
    PERFORM hopper._check_required(fn, 'role_name', role_name IS NULL);
    IF NOT EXISTS (SELECT FROM pg_roles AS r WHERE r.rolname = role_name) THEN
        PERFORM hopper._raise(fn, '42704', format('role_name "%s" is not a role', role_name));
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema_oid::regnamespace, role_name);
    FOR target IN
        SELECT p.oid::regprocedure FROM pg_proc AS p
        WHERE p.pronamespace = schema_oid AND p.proname = any(function_names)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', target, role_name);
    END LOOP;
END
$$;

-- Lets role_name add jobs and read their status.
CREATE OR REPLACE FUNCTION hopper.grant_producer(role_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._grant_functions(
        'grant_producer', role_name, ARRAY['add_job', 'add_jobs', 'job_status']
    );
END
$$;

-- Lets role_name produce and run jobs as a worker.
CREATE OR REPLACE FUNCTION hopper.grant_worker(role_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hopper._grant_functions(
        'grant_worker', role_name, ARRAY[
            'add_job', 'add_jobs', 'job_status', 'register_worker', 'unregister_worker',
            'heartbeat', 'get_jobs', 'get_job', 'complete_job', 'complete_claimed_jobs',
            'complete_claimed_job_ids', 'fail_job', 'fail_claimed_jobs', 'release_jobs',
            'release_unknown_jobs', 'rescue_stale_jobs', 'set_progress', 'enqueue_due_schedules',
            'next_schedule_firing', 'prune_expired'
        ]
    );
END
$$;
