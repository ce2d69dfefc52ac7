-- Dependencies (SPEC.md 3.4). A waiting job names the jobs it waits for in
-- depends_on and its tag barrier in depends_on_tags. A job that ends finds
-- the waiting jobs it may release or cancel through these two indexes, so
-- the work is in proportion to its dependents; while no job waits they are
-- empty, and the lookup a completion makes costs almost nothing. Without
-- fastupdate: a GIN pending list is read whole by every lookup, and every
-- completion looks.
CREATE INDEX jobs_waiting_on_jobs ON hopper._jobs USING gin (depends_on)
WITH (fastupdate = off)
WHERE state = 'waiting';

CREATE INDEX jobs_waiting_on_tags ON hopper._jobs USING gin (depends_on_tags)
WITH (fastupdate = off)
WHERE state = 'waiting';

-- The active jobs that hold tags: the holders of a tag barrier.
CREATE INDEX jobs_active_tags ON hopper._jobs USING gin (tags)
WHERE tags IS NOT NULL AND state IN ('waiting', 'scheduled', 'pending', 'running');

-- 0002 made an edge table for dependencies that nothing ever wrote: the
-- depends_on array the job record shows anyway, indexed above, serves.
DROP TABLE hopper._job_dependencies;
