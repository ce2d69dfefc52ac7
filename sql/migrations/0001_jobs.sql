-- Jobs live in one table. Every hot path (claim, promotion of due jobs, lock
-- expiry, job keys) reads a partial index that holds active jobs only, so the
-- cost of claiming does not grow with the finished jobs kept for retention.

CREATE TABLE hopper.settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO hopper.settings (name, value) VALUES
('completed_retention', '1 day'),
('failed_retention', '30 days'),
('max_payload_bytes', '1048576'),
('max_batch_size', '10000'),
('timeout_grace', '30 seconds');

-- Stored states are those of SPEC.md section 1. A 'scheduled' job whose
-- run_at has passed is promoted to 'pending' by the next claim; the public
-- view derives scheduled/pending from run_at so readers never see the lag.
CREATE TABLE hopper._jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_identifier text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    queue_name text,
    state text NOT NULL,
    priority smallint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts smallint NOT NULL DEFAULT 0,
    max_attempts smallint NOT NULL DEFAULT 25,
    last_error text,
    errors jsonb NOT NULL DEFAULT '[]',
    key text,
    flags text[],
    tags text[],
    depends_on bigint[],
    depends_on_tags text[],
    locked_at timestamptz,
    locked_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    result jsonb,
    progress smallint,
    timeout interval,
    revision integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    dead_letter text,
    dead_letter_job_id bigint,
    backoff text,
    backoff_delay interval,
    backoff_max interval,
    CONSTRAINT jobs_state_known CHECK (
        state IN (
            'waiting', 'scheduled', 'pending', 'running',
            'completed', 'failed', 'cancelled'
        )
    ),
    CONSTRAINT jobs_locked_iff_running CHECK (
        (state = 'running') = (locked_at IS NOT NULL AND locked_by IS NOT NULL)
    ),
    CONSTRAINT jobs_finished_at_iff_finished CHECK (
        (state IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)
    ),
    CONSTRAINT jobs_progress_percent CHECK (progress BETWEEN 0 AND 100)
);

-- The claim walks this index in claim order and stops after batch_size rows.
CREATE INDEX jobs_pending_claim_order ON hopper._jobs (priority, run_at, id)
WHERE state = 'pending';

CREATE INDEX jobs_scheduled_run_at ON hopper._jobs (run_at)
WHERE state = 'scheduled';

CREATE INDEX jobs_running_locked_at ON hopper._jobs (locked_at)
WHERE state = 'running';

-- At most one active job per key; finished jobs keep their key as history.
CREATE UNIQUE INDEX jobs_active_key ON hopper._jobs (key)
WHERE key IS NOT NULL AND state IN ('waiting', 'scheduled', 'pending', 'running');

CREATE INDEX jobs_finished_key ON hopper._jobs (key, finished_at)
WHERE key IS NOT NULL AND state IN ('completed', 'failed', 'cancelled');

CREATE INDEX jobs_finished_at ON hopper._jobs (finished_at)
WHERE state IN ('completed', 'failed', 'cancelled');

-- The public record of a job (SPEC.md section 1).
CREATE VIEW hopper.jobs AS
SELECT
    j.id,
    j.task_identifier,
    j.payload,
    j.queue_name,
    CASE
        WHEN j.state NOT IN ('scheduled', 'pending') THEN j.state
        WHEN j.run_at > now() THEN 'scheduled'
        ELSE 'pending'
    END AS state,
    j.priority::integer AS priority,
    j.run_at,
    j.attempts::integer AS attempts,
    j.max_attempts::integer AS max_attempts,
    j.last_error,
    j.errors,
    j.key,
    j.flags,
    j.tags,
    j.depends_on,
    j.depends_on_tags,
    j.locked_at,
    j.locked_by,
    j.created_at,
    j.updated_at,
    j.started_at,
    j.finished_at,
    j.result,
    j.progress,
    j.timeout,
    j.revision,
    j.cancel_requested,
    j.dead_letter,
    j.dead_letter_job_id
FROM hopper._jobs AS j;
