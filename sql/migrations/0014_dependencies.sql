-- Dependencies (SPEC.md 3.4). A waiting job names the jobs it waits for in
-- depends_on and its tag barrier in depends_on_tags. A job that ends finds
-- the waiting jobs it may release or cancel through these two indexes, so
-- the work is in proportion to its dependents. Without fastupdate: a GIN pending list is read whole by every lookup, and every
-- completion looks.
CREATE INDEX jobs_waiting_on_jobs ON hopper._jobs USING gin (depends_on)
WITH (fastupdate = off)
WHERE state = 'waiting';

CREATE INDEX jobs_waiting_on_tags ON hopper._jobs USING gin (depends_on_tags)
WITH (fastupdate = off)
WHERE state = 'waiting';

-- Whether any job waits, in one probe: a completion asks it first. Its
-- predicate names finished_at (NULL on every waiting job) so that no query
-- but that question can use it: a lookup of dependents planned while few
-- jobs wait would otherwise read this index whole instead of the GIN ones.
CREATE INDEX jobs_waiting ON hopper._jobs (id)
WHERE state = 'waiting' AND finished_at IS NULL;

-- The active jobs that hold tags: the holders of a tag barrier.
CREATE INDEX jobs_active_tags ON hopper._jobs USING gin (tags)
WHERE tags IS NOT NULL AND state IN ('waiting', 'scheduled', 'pending', 'running');

-- 0002 made an edge table for dependencies that nothing ever wrote: the
-- depends_on array the job record shows anyway, indexed above, serves.
DROP TABLE hopper._job_dependencies;
