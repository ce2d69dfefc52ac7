-- A pending job was indexed twice: in claim order over all tasks, and in
-- claim order within its task. Claims now always walk the per-task index (a
-- claim of any task first lists the tasks with pending jobs), and the other
-- index took 84 of the 383 bytes of WAL an insert writes.
DROP INDEX hopper.jobs_pending_claim_order;

-- What every step of a claim may take: pending jobs outside a paused or full
-- named queue. It is only a lock-free pre-filter; _within_queue_limits
-- re-checks the queues under lock. row_id is the version read (or locked).
CREATE VIEW hopper._claimable_jobs AS
SELECT
    j.id,
    j.ctid AS row_id,
    j.task_identifier,
    j.priority,
    j.run_at,
    j.queue_name,
    j.flags
FROM hopper._jobs AS j
WHERE
    j.state = 'pending'
    AND (j.queue_name IS NULL OR EXISTS (
        SELECT FROM hopper._queues AS q
        WHERE q.name = j.queue_name AND NOT q.paused AND q.running < q.concurrency
    ));
