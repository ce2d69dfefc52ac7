-- get_jobs and _lock_candidates now run these steps as statements of their
-- own, which costs a claim less than calls of helpers, so nothing calls them.
-- get_jobs also finds the expired locks itself and hands them to
-- _expire_locks, whose arguments change.
DROP FUNCTION IF EXISTS hopper._promote_due_jobs(timestamptz);
DROP FUNCTION IF EXISTS hopper._note_waiting(text, boolean);
DROP FUNCTION IF EXISTS hopper._pending_task_keys();
DROP FUNCTION IF EXISTS hopper._tasks_with_work(integer[], text[], text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._expire_locks(timestamptz, timestamptz, interval);
