-- Operations: the jobs table churns (every job is inserted, updated two or
-- three times and deleted), so autovacuum should visit it long before the
-- default 20% of dead rows; queue and worker rows are updated on every claim
-- or heartbeat, so their pages keep room for HOT updates.

ALTER TABLE hopper._jobs SET (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

ALTER TABLE hopper._queues SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0
);

ALTER TABLE hopper._workers SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0
);

-- A worker claims only the tasks it knows: one ordered range per task, so
-- pending jobs of other tasks cost it nothing.
CREATE INDEX jobs_pending_by_task ON hopper._jobs (task_identifier, priority, run_at, id)
WHERE state = 'pending';
