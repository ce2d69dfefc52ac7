-- Worker rows are never deleted (a retired id stays retired: it fences the
-- locks of its old owner), so the test every add_job and every notifying
-- statement makes, whether some worker waits, scanned every worker that ever
-- ran: with 5,000 retired workers 93 pages, 0.28 ms an add. This index holds
-- the waiting workers only.
CREATE INDEX workers_waiting ON hopper._workers (id)
WHERE waiting AND retired_at IS NULL;
