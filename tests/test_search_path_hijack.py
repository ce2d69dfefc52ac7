"""A hostile schema first in the caller's search_path never runs inside hopper."""

from __future__ import annotations

from sqlcalls import call

HOSTILE = """
CREATE SCHEMA evil;
CREATE TABLE evil.ran (what text);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql
    AS $$ INSERT INTO evil.ran VALUES ('now') RETURNING '2000-01-01'::timestamptz $$;
CREATE FUNCTION evil.coalesce_hook(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO evil.ran VALUES ('='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.coalesce_hook);
CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO evil.ran VALUES ('pg_notify') $$;
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO evil.ran VALUES ('jsonb_typeof') RETURNING 'object' $$;
CREATE TABLE evil._jobs (id int);
CREATE TABLE evil.settings (name text, value text);
"""


def test_shadow_functions_operators_and_tables_never_run(conn):
    conn.execute(HOSTILE)
    conn.execute("SET search_path = evil, public, pg_catalog")
    added = conn.execute("SELECT * FROM hopper.add_job('t', '[1]', job_key => 'k')").fetchone()
    conn.execute("SELECT * FROM hopper.add_job('t', '[2]', job_key => 'k')")
    claimed = call(conn, "get_jobs", "w1", batch_size=5)
    call(conn, "fail_job", "w1", claimed[0]["id"], "x")
    call(conn, "rescue_stale_jobs")
    call(conn, "prune")
    assert added["run_at"].year > 2000
    assert claimed[0]["payload"] == [1, 2]
    assert conn.execute("SELECT count(*) AS n FROM evil.ran").fetchone()["n"] == 0
