-- A pending job was indexed twice: in claim order over all tasks, and in
-- claim order within its task. Claims now always walk the per-task index (a
-- claim of any task first lists the tasks with pending jobs), and the other
-- index took 84 of the 383 bytes of WAL an insert writes.
DROP INDEX hopper.jobs_pending_claim_order;
