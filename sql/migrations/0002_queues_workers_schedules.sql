-- Named queues, workers, dependencies and schedules. Functions for the last
-- three arrive with later issues; their tables are here so that later work
-- adds functions, not a second table layout.

-- running counts the queue's claimed jobs. Claimers lock the row with
-- SKIP LOCKED and re-read it, so the count stays exact under concurrency.
CREATE TABLE hopper._queues (
    name text PRIMARY KEY,
    concurrency integer NOT NULL DEFAULT 1,
    paused boolean NOT NULL DEFAULT false,
    running integer NOT NULL DEFAULT 0,
    CONSTRAINT queues_concurrency_positive CHECK (concurrency >= 1),
    CONSTRAINT queues_running_not_negative CHECK (running >= 0)
);

CREATE TABLE hopper._workers (
    id text PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    metadata jsonb NOT NULL DEFAULT '{}'
);

-- One row per (prerequisite, dependent) edge, so finishing a job touches only
-- its own dependents.
CREATE TABLE hopper._job_dependencies (
    prerequisite_id bigint NOT NULL,
    job_id bigint NOT NULL REFERENCES hopper._jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (prerequisite_id, job_id)
);

CREATE TABLE hopper._schedules (
    name text PRIMARY KEY,
    cron text NOT NULL,
    task_identifier text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    job_options jsonb NOT NULL DEFAULT '{}',
    backfill interval,
    timezone text NOT NULL DEFAULT 'UTC',
    last_fired_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The arguments of add_job, one per job, for add_jobs.
CREATE TYPE hopper.job_spec AS (
    identifier text,
    payload json,
    queue_name text,
    run_at timestamptz,
    max_attempts integer,
    job_key text,
    priority integer,
    flags text [],
    job_key_mode text,
    tags text [],
    depends_on bigint [],
    depends_on_tags text [],
    timeout interval,
    backoff text,
    backoff_delay interval,
    backoff_max interval,
    dead_letter text
);

-- A job record as add_job and add_jobs return it: the columns of hopper.jobs
-- and how the call was applied (inserted, updated or deduped).
CREATE TYPE hopper.added_job AS (
    id bigint,
    task_identifier text,
    payload jsonb,
    queue_name text,
    state text,
    priority integer,
    run_at timestamptz,
    attempts integer,
    max_attempts integer,
    last_error text,
    errors jsonb,
    key text,
    flags text [],
    tags text [],
    depends_on bigint [],
    depends_on_tags text [],
    locked_at timestamptz,
    locked_by text,
    created_at timestamptz,
    updated_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    result jsonb,
    progress smallint,
    timeout interval,
    revision integer,
    cancel_requested boolean,
    dead_letter text,
    dead_letter_job_id bigint,
    outcome text
);
