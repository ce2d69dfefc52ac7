-- jobs_pending_by_task led with the task's name, and comparing names (a
-- variable-width column ahead of the others) took a tenth of a bulk insert:
-- 100,000 jobs in one add_jobs call went from 442 to 407 ms. It now leads
-- with hashtext(name), the task's key; claims walk one range per key and
-- filter by name (see claim.sql).
DROP INDEX hopper.jobs_pending_by_task;

CREATE INDEX jobs_pending_by_task ON hopper._jobs (
    (pg_catalog.hashtext(task_identifier)), priority, run_at, id
)
WITH (deduplicate_items = false)
WHERE state = 'pending';

-- the claim steps take task keys (integer[]) instead of task names
DROP FUNCTION IF EXISTS hopper._pending_tasks();
DROP FUNCTION IF EXISTS hopper._tasks_with_work(text[], text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._count_shares(text[], integer[], integer, text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._batch_shares(text[], integer, text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._lock_walk(text[], integer[], bigint[], text[], timestamptz);
