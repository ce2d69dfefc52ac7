-- Dependencies (SPEC.md 3.4). A waiting job names the jobs it waits for in
-- depends_on, and _job_dependencies (from 0002) holds an edge to each that
-- has not finished, so a job that ends finds its dependents by its id. A
-- barrier's waiters are found by tag through jobs_waiting_on_tags, which
-- holds waiting jobs only; without fastupdate, because a GIN pending list is
-- read whole by every lookup. Every partial index costs each job written
-- (about 3 ms per 100,000 whatever its predicate), so there are two.
CREATE INDEX jobs_waiting_on_tags ON hopper._jobs USING gin (depends_on_tags)
WITH (fastupdate = off)
WHERE state = 'waiting';

-- The active jobs that hold tags: the holders of a tag barrier.
CREATE INDEX jobs_active_tags ON hopper._jobs USING gin (tags)
WHERE tags IS NOT NULL AND state IN ('waiting', 'scheduled', 'pending', 'running');
