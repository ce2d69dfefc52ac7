-- Every key of jobs_pending_by_task is distinct (it ends with the job id), so
-- the deduplication pass that a full leaf page gets before it splits never
-- merges anything; switched off, 100,000 inserted jobs took 2 % less.
ALTER INDEX hopper.jobs_pending_by_task SET (deduplicate_items = false);
