"""`hopper bench`: throughput, latency and scaling of hopper, optionally side by side
with graphile-worker on the same PostgreSQL. A benchmark, never a timed test.

Every workload runs in a fresh schema of one database; the figures of one run are
compared with each other only (ratios), since a shared machine varies run to run.
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from hopper._graphile import READY_TEXT, Graphile, GraphileUnavailable, install
from hopper._migrate import migrate

HOPPER_SCHEMA = "hopper_bench"
GRAPHILE_SCHEMA = "graphile_worker_bench"


@dataclass(frozen=True)
class Sizes:
    single: int = 3000
    bulk: int = 100_000
    process: int = 100_000
    latency: int = 1000
    depth_filler: int = 1_000_000
    depth_measured: int = 36_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(single=200, bulk=5000, process=3000, latency=40, depth_filler=20_000,
                   depth_measured=500)  # fmt: skip


@dataclass
class Figure:
    workload: str
    system: str
    variant: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the systems under test ----------------------------------------------------------


class System:
    name: str
    schema: str

    def __init__(self, dsn: str, work_dir: Path) -> None:
        self.dsn = dsn
        self.work_dir = work_dir

    def reset(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        self.install()

    def install(self) -> None:
        raise NotImplementedError

    def add_job_sql(self) -> str:
        return f"SELECT {self.schema}.add_job('noop', %s)"

    def bulk_sql(self) -> str:
        raise NotImplementedError

    def unfinished_jobs_sql(self) -> str:
        """FROM ... WHERE ... of the jobs not finished yet."""
        raise NotImplementedError

    def start_worker(self, name: str, concurrency: int, **env: str) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    ready_text = ""

    def wait_ready(self, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.ready_text in log.read_text(errors="replace"):
                return time.monotonic() - started
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited: {log.read_text()[-2000:]}")
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} worker not ready after {timeout}s")

    def log_path(self, name: str) -> Path:
        return self.work_dir / f"{self.name}-{name}.log"


def hopper_bulk_sql(schema: str) -> str:
    """add_jobs of %s no-op jobs in one call, counting the rows it returns."""
    return (
        f"SELECT count(*) FROM {schema}.add_jobs(ARRAY(SELECT ROW('noop', '{{}}', NULL,"
        " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        f"::{schema}.job_spec FROM generate_series(1, %s)))"
    )


class Hopper(System):
    name = "hopper"
    schema = HOPPER_SCHEMA
    ready_text = "started"

    def __init__(self, dsn: str, work_dir: Path, completed_retention: str | None = None) -> None:
        super().__init__(dsn, work_dir)
        self.completed_retention = completed_retention

    def install(self) -> None:
        migrate(self.dsn, self.schema)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            # the bulk workloads add 100,000 jobs in one call
            conn.execute(f"SELECT {self.schema}.set_setting('max_batch_size', '1000000')")
            if self.completed_retention is not None:
                conn.execute(
                    f"SELECT {self.schema}.set_setting('completed_retention', %s)",
                    [self.completed_retention],
                )

    def bulk_sql(self) -> str:
        return hopper_bulk_sql(self.schema)

    def unfinished_jobs_sql(self) -> str:
        return (
            f"FROM {self.schema}._jobs"
            " WHERE state IN ('waiting', 'scheduled', 'pending', 'running')"
        )

    def start_worker(self, name: str, concurrency: int, **env: str) -> subprocess.Popen[bytes]:
        log = self.log_path(name)
        with open(log, "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "hopper", "--database-url", self.dsn, "--schema",
                 self.schema, "worker", "--tasks", "hopper._bench_tasks:tasks",
                 "-c", str(concurrency), "--poll-interval", "2"],
                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip


class GraphileWorker(System):
    name = "graphile-worker"
    schema = GRAPHILE_SCHEMA
    ready_text = READY_TEXT

    def __init__(self, dsn: str, work_dir: Path, folder: Path, local_queue: int = 500) -> None:
        super().__init__(dsn, work_dir)
        self.graphile = Graphile(folder, dsn, self.schema)
        self.local_queue = local_queue

    def install(self) -> None:
        self.graphile.install_schema()

    def bulk_sql(self) -> str:
        return (
            f"SELECT count(*) FROM {self.schema}.add_jobs(ARRAY(SELECT ROW('noop', '{{}}',"
            f" NULL, NULL, NULL, NULL, NULL, NULL)::{self.schema}.job_spec"
            " FROM generate_series(1, %s)))"
        )

    def unfinished_jobs_sql(self) -> str:
        return f"FROM {self.schema}._private_jobs"

    def start_worker(self, name: str, concurrency: int, **env: str) -> subprocess.Popen[bytes]:
        return self.graphile.start_worker(
            concurrency, self.local_queue, 0, self.log_path(name), **env
        )


@contextmanager
def running_workers(
    system: System, processes: int, concurrency: int, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    started = []
    try:
        for i in range(processes):
            process = system.start_worker(f"w{i}", concurrency, **env)
            started.append(process)
            system.wait_ready(process, system.log_path(f"w{i}"))
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def scalar(dsn: str, query: str, params: list[Any] | None = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params or []).fetchone()
    return row[0] if row else None


def one_value(conn: psycopg.Connection, query: str) -> Any:
    """The first column of the one row query returns."""
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


# --- workloads -------------------------------------------------------------------------


def checkpoint(conn: psycopg.Connection) -> None:
    """Writes out what earlier workloads left dirty, so that a checkpoint their WAL
    brings on does not fall inside the next measurement (where it cost a bulk
    insert of 100,000 jobs up to 20 %). Skipped without the privilege."""
    with suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def fresh_raw_table(conn: psycopg.Connection, like: str | None = None) -> None:
    """bench_raw as (id, payload), or with like as a copy of that table: its columns,
    defaults, CHECK constraints and indexes."""
    conn.execute("DROP TABLE IF EXISTS bench_raw")
    if like is None:
        conn.execute("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
    else:
        table = sql.Identifier(*like.split("."))
        conn.execute(sql.SQL("CREATE TABLE bench_raw (LIKE {} INCLUDING ALL)").format(table))


def raw_row(jobs_table: str | None, payload: str) -> tuple[str, str]:
    """The columns and values of a bench_raw row: the payload, or in a copy of the
    job table the columns a plain add_job writes."""
    if jobs_table is None:
        return "(payload)", payload
    return "(task_identifier, payload, state, run_at)", f"'noop', {payload}, 'pending', now()"


RAW_INSERT_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}(payload jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN INSERT INTO {table} (payload) VALUES (payload); END $$
"""


RAW_SINGLE = "raw single-row INSERT"
RAW_IN_FUNCTION = "that INSERT in a function"
RAW_SINGLE_JOBS = "that INSERT into a copy of _jobs"
RAW_BULK = "raw INSERT ... SELECT"
RAW_BULK_JOBS = "INSERT ... SELECT, copy of _jobs"


def raw_single_inserts(
    dsn: str, n: int, in_function: bool = False, jobs_table: str | None = None
) -> float:
    """Rows/s of one-row INSERTs on one connection, autocommit. With in_function,
    the same INSERT inside a PL/pgSQL function declared as SPEC.md 7 asks of every
    hopper function (SECURITY DEFINER, pinned search_path): what the call alone
    costs, the ceiling of any add_job. With jobs_table, the row add_job writes, into
    a copy of that table: what the table alone costs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        fresh_raw_table(conn, jobs_table)
        columns, values = raw_row(jobs_table, "%s::jsonb")
        query = f"INSERT INTO bench_raw {columns} VALUES ({values})"
        if in_function:
            schema = one_value(conn, "SELECT current_schema()")
            function = sql.Identifier(schema, "bench_raw_insert")
            conn.execute(sql.SQL(RAW_INSERT_FUNCTION).format(
                function=function, table=sql.Identifier(schema, "bench_raw")
            ))  # fmt: skip
            query = sql.SQL("SELECT {}(%s::jsonb)").format(function).as_string(conn)
        checkpoint(conn)
        started = time.perf_counter()
        for i in range(n):
            conn.execute(query, [Json({"n": i})])
        return n / (time.perf_counter() - started)


def raw_insert_select(dsn: str, n: int, jobs_table: str | None = None) -> float:
    """Rows/s of one INSERT ... SELECT of n rows; with jobs_table, of the rows a plain
    add_jobs writes, into a copy of that table."""
    columns, values = raw_row(jobs_table, "jsonb_build_object('n', i)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        fresh_raw_table(conn, jobs_table)
        checkpoint(conn)
        started = time.perf_counter()
        conn.execute(
            f"INSERT INTO bench_raw {columns} SELECT {values} FROM generate_series(1, %s) AS i",
            [n],
        )
        return n / (time.perf_counter() - started)


def enqueue_single(system: System, n: int, producers: int) -> float:
    system.reset()
    with psycopg.connect(system.dsn, autocommit=True) as conn:
        checkpoint(conn)
    per_producer = n // producers
    barrier = threading.Barrier(producers + 1)
    query = system.add_job_sql()

    def produce() -> None:
        with psycopg.connect(system.dsn, autocommit=True) as conn:
            barrier.wait()
            for i in range(per_producer):
                conn.execute(query, [Json({"n": i})])

    threads = [threading.Thread(target=produce) for _ in range(producers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return per_producer * producers / (time.perf_counter() - started)


def enqueue_bulk(system: System, n: int, batch: int) -> float:
    system.reset()
    with psycopg.connect(system.dsn, autocommit=True) as conn:
        checkpoint(conn)
        started = time.perf_counter()
        for _ in range(n // batch):
            conn.execute(system.bulk_sql(), [batch])
        return (n // batch) * batch / (time.perf_counter() - started)


def wait_drained(system: System, total: int, timeout: float = 600) -> float:
    """Seconds until no job is left unfinished, printing progress. The frequent
    check is an EXISTS and the count runs every 5 s only: counting a table of
    100,000 rows 20 times a second would take CPU from the system measured."""
    started = time.perf_counter()
    last_report = started
    any_left = f"SELECT EXISTS (SELECT 1 {system.unfinished_jobs_sql()})"
    count_left = f"SELECT count(*) {system.unfinished_jobs_sql()}"
    with psycopg.connect(system.dsn, autocommit=True) as conn:
        while one_value(conn, any_left):
            now = time.perf_counter()
            if now - started > timeout:
                raise RuntimeError(f"{system.name}: jobs left after {timeout}s")
            if now - last_report > 5:
                left = one_value(conn, count_left)
                say(f"  ... {total - left}/{total} done")
                last_report = now
            time.sleep(0.02)
        return time.perf_counter() - started


def process(system: System, n: int, processes: int, concurrency: int) -> float:
    system.reset()
    with running_workers(system, processes, concurrency):
        time.sleep(0.5)
        scalar(system.dsn, system.bulk_sql(), [n])
        took = wait_drained(system, n)
    return n / took


def latency(system: System, n: int, gap: float) -> dict[str, float]:
    system.reset()
    record = system.work_dir / f"{system.name}-latency.txt"
    record.write_text("")
    added: dict[int, float] = {}
    env = {"HOPPER_BENCH_LATENCY_FILE": str(record), "GW_LATENCY_FILE": str(record)}
    with running_workers(system, 1, 4, **env), psycopg.connect(system.dsn, autocommit=True) as conn:
        query = system.add_job_sql().replace("'noop'", "'latency'")
        time.sleep(1)
        for i in range(n):
            added[i] = time.time()
            conn.execute(query, [Json({"n": i})])
            time.sleep(gap)
        deadline = time.monotonic() + 30
        while len(record.read_text().splitlines()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    starts = dict(line.split() for line in record.read_text().splitlines())
    delays = sorted((float(starts[str(i)]) - added[i]) * 1000 for i in added if str(i) in starts)
    if len(delays) < n:
        raise RuntimeError(f"{system.name}: only {len(delays)} of {n} latency jobs ran")
    return {
        "p50": percentile(delays, 50),
        "p95": percentile(delays, 95),
        "p99": percentile(delays, 99),
        "max": delays[-1],
    }


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


DEPTH_KINDS = ("empty", "pending", "finished")
DEPTH_ROUNDS = 9


class DepthTable:
    """One schema holding `filler` pending or finished jobs (or none) and the jobs
    that one connection claims and completes, in batches of 10, to measure."""

    def __init__(self, dsn: str, kind: str, filler: int, measured: int) -> None:
        self.schema = f"{HOPPER_SCHEMA}_{kind}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self.schema)))  # fmt: skip
        migrate(dsn, self.schema)
        s = self.schema
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(f"SELECT {s}.set_setting('max_batch_size', '1000000')")
        if kind != "empty":
            state = "'pending', NULL" if kind == "pending" else "'completed', now()"
            self.conn.execute(
                f"INSERT INTO {s}._jobs (task_identifier, priority, state, finished_at)"
                f" SELECT 'filler', 100, {state} FROM generate_series(1, %s)",
                [filler],
            )
        self.conn.execute(hopper_bulk_sql(s), [measured * (DEPTH_ROUNDS + 1) // DEPTH_ROUNDS])
        self.conn.execute(f"VACUUM ANALYZE {s}._jobs")
        # the WAL flush costs the same at any depth, and its jitter would hide what
        # the depth does to the claim's own work
        self.conn.execute("SET synchronous_commit = off")
        self.claim = f"SELECT array_agg(id) FROM {s}.get_jobs('bench', ARRAY['noop'], 10)"
        self.complete = f"SELECT {s}.complete_claimed_job_ids('bench', %s)"

    def rate(self, jobs: int) -> float:
        started = time.perf_counter()
        done = 0
        while done < jobs:
            ids = one_value(self.conn, self.claim)
            if not ids:
                break
            self.conn.execute(self.complete, [ids])
            done += len(ids)
        return done / (time.perf_counter() - started)

    def close(self) -> None:
        self.conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema)))
        self.conn.close()


def depth(dsn: str, filler: int, measured: int) -> dict[str, float]:
    """claim+complete throughput with 0 jobs, `filler` pending and `filler` finished
    jobs present. The three tables are measured in alternating rounds (median per
    table), so that drift of the machine during the run falls on all three alike."""
    tables = {kind: DepthTable(dsn, kind, filler, measured) for kind in DEPTH_KINDS}
    try:
        chunk = measured // DEPTH_ROUNDS
        for table in tables.values():
            table.rate(chunk // 5)  # untimed: the session plans and caches its statements
        rates: dict[str, list[float]] = {kind: [] for kind in DEPTH_KINDS}
        for _ in range(DEPTH_ROUNDS):
            for kind, table in tables.items():
                rates[kind].append(table.rate(chunk))
        return {kind: statistics.median(values) for kind, values in rates.items()}
    finally:
        for table in tables.values():
            table.close()


def startup(system: Hopper) -> dict[str, float]:
    # an installed wheel comes with its modules' bytecode; a source tree run with
    # PYTHONDONTWRITEBYTECODE set would compile every module at every start (a
    # quarter of the time to ready)
    compileall.compile_dir(Path(__file__).parent, quiet=2)
    system.reset()
    times, memory = [], []
    for i in range(3):
        log = system.log_path(f"startup{i}")
        spawned = time.monotonic()
        process = system.start_worker(f"startup{i}", 8)
        try:
            system.wait_ready(process, log)
            times.append((time.monotonic() - spawned) * 1000)
            memory.append(resident_mb(process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
    return {"ready_ms": statistics.median(times), "rss_mb": statistics.median(memory)}


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the run -------------------------------------------------------------------------------


class Run:
    def __init__(self, dsn: str, sizes: Sizes, repeat: int, compare: bool, cache: Path) -> None:
        self.dsn = dsn
        self.sizes = sizes
        self.repeat = repeat
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.work_dir = Path(tempfile.mkdtemp(prefix="hopper-bench-"))
        self.graphile_folder: Path | None = None
        if compare:
            try:
                say(f"graphile-worker: from {cache} (installed from the npm registry once) ...")
                self.graphile_folder = install(cache)
            except GraphileUnavailable as error:
                self.notes.append(str(error))
                say(str(error))

    def hopper(self, retention: str | None = None) -> Hopper:
        return Hopper(self.dsn, self.work_dir, retention)

    def graphile(self) -> GraphileWorker | None:
        if self.graphile_folder is None:
            return None
        return GraphileWorker(self.dsn, self.work_dir, self.graphile_folder)

    def medians(self, measures: Mapping[Any, Callable[[], Any]]) -> dict[Any, list[Any]]:
        """Every measure ``repeat`` times, in rounds that take each measure once in
        turn, so a slow spell of a shared machine falls on all systems alike and
        their ratio stays fair. Returns each measure's results."""
        results: dict[Any, list[Any]] = {key: [] for key in measures}
        for _ in range(self.repeat):
            for key, measure in measures.items():
                results[key].append(measure())
        return results

    def add_median(self, workload: str, system: str, variant: str, runs: list[float],
                   unit: str) -> None:  # fmt: skip
        """The median of runs as the figure; the runs themselves go into the JSON."""
        self.add(workload, system, variant, statistics.median(runs), unit,
                 runs=[round(run, 2) for run in runs])  # fmt: skip

    def add(self, workload: str, system: str, variant: str, value: float, unit: str,
            **extra: Any) -> None:  # fmt: skip
        figure = Figure(workload, system, variant, round(value, 2), unit, extra)
        self.figures.append(figure)
        say(f"  {workload:<15} {system:<16} {variant:<34} {value:>12,.1f} {unit}")

    def jobs_table(self) -> str:
        """hopper's job table (installed if need be), for the ceilings copied from it."""
        migrate(self.dsn, HOPPER_SCHEMA)
        return f"{HOPPER_SCHEMA}._jobs"

    def systems(self) -> list[System]:
        graphile = self.graphile()
        return [self.hopper(), *([graphile] if graphile else [])]

    def enqueue_single(self) -> None:
        n = self.sizes.single
        measures: dict[Any, Callable[[], float]] = {
            ("postgresql", RAW_SINGLE, "rows/s"): lambda: raw_single_inserts(self.dsn, n),
            ("postgresql", RAW_IN_FUNCTION, "rows/s"): lambda: raw_single_inserts(
                self.dsn, n, in_function=True
            ),
            ("postgresql", RAW_SINGLE_JOBS, "rows/s"): lambda: raw_single_inserts(
                self.dsn, n, jobs_table=self.jobs_table()
            ),
        }
        for system in self.systems():
            for producers in (1, 8):
                measures[(system.name, f"{producers} producer(s)", "jobs/s")] = partial(
                    enqueue_single, system, n, producers
                )
        for (name, variant, unit), runs in self.medians(measures).items():
            self.add_median("enqueue-single", name, variant, runs, unit)

    def enqueue_bulk(self) -> None:
        n = self.sizes.bulk
        measures: dict[Any, Callable[[], float]] = {
            ("postgresql", RAW_BULK, "rows/s"): lambda: raw_insert_select(self.dsn, n),
            ("postgresql", RAW_BULK_JOBS, "rows/s"): lambda: raw_insert_select(
                self.dsn, n, jobs_table=self.jobs_table()
            ),
        }
        for system in self.systems():
            for batch in (n, 1000):
                measures[(system.name, f"batches of {batch:,}", "jobs/s")] = partial(
                    enqueue_bulk, system, n, batch
                )
        for (name, variant, unit), runs in self.medians(measures).items():
            self.add_median("enqueue-bulk", name, variant, runs, unit)

    def process(self) -> None:
        n = self.sizes.process
        # no-op jobs: a high concurrency makes every claim and report a big batch
        # (measured: 2 processes x 512 beat x 256 by 13% and x 1000 by 2%)
        configurations: list[tuple[System, str, int, int]] = [
            (self.hopper(), "retention 1 day", 1, 512),
            (self.hopper(), "retention 1 day", 2, 512),
            (self.hopper("0"), "retention 0", 1, 512),
            (self.hopper("0"), "retention 0", 2, 512),
        ]
        graphile = self.graphile()
        if graphile is not None:
            configurations += [(graphile, "local queue 500, batched", 1, 24),
                               (graphile, "local queue 500, batched", 2, 24)]  # fmt: skip
        measures: dict[Any, Callable[[], float]] = {
            (system.name, f"{processes} x {concurrency}, {label}"): partial(
                process, system, n, processes, concurrency
            )
            for system, label, processes, concurrency in configurations
        }
        for (name, variant), runs in self.medians(measures).items():
            self.add_median("process", name, variant, runs, "jobs/s")

    def latency(self) -> None:
        measures = {
            system.name: partial(latency, system, self.sizes.latency, 0.01)
            for system in self.systems()
        }
        for name, runs in self.medians(measures).items():
            # the run with the median p50, whole, so its percentiles belong together
            result = sorted(runs, key=lambda run: run["p50"])[len(runs) // 2]
            self.add("latency", name, "add -> start p50", result["p50"], "ms", **result)

    def depth(self) -> None:
        filler = self.sizes.depth_filler
        say(f"  filling two tables with {filler:,} jobs each ...")
        runs = [depth(self.dsn, filler, self.sizes.depth_measured) for _ in range(self.repeat)]
        for kind in DEPTH_KINDS:
            value = statistics.median(run[kind] for run in runs)
            variant = "0 jobs" if kind == "empty" else f"{filler:,} {kind}"
            self.add("depth", "hopper", variant, value, "jobs/s")

    def startup(self) -> None:
        result = startup(self.hopper())
        self.add("startup", "hopper", "start -> ready", result["ready_ms"], "ms", **result)
        self.add("startup", "hopper", "resident memory", result["rss_mb"], "MB")


def environment(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        settings = {
            name: one_value(conn, f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }
        version = one_value(conn, "SELECT version()")
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    memory = next(
        (int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal")), 0,
    )  # fmt: skip
    return {
        "hardware": {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": memory},
        "postgresql": {"version": version, **settings},
        "python": sys.version.split()[0],
    }


def ratios(figures: list[Figure], sizes: Sizes) -> list[dict[str, Any]]:
    """hopper / graphile-worker per workload, and against the raw PostgreSQL ceilings."""

    def best(workload: str, system: str, variant: str | None = None) -> float | None:
        values = [
            f.value
            for f in figures
            if f.workload == workload and f.system == system and variant in (None, f.variant)
        ]
        if not values:
            return None
        return min(values) if workload == "latency" else max(values)

    one_call = f"batches of {sizes.bulk:,}"
    comparisons = [
        ("process", "best configuration", None),
        ("enqueue-bulk", "one call", one_call),
        ("enqueue-single", "one producer", "1 producer(s)"),
        ("enqueue-single", "8 producers", "8 producer(s)"),
        ("latency", "p50", None),
    ]
    out = []
    for workload, label, variant in comparisons:
        hop, gw = best(workload, "hopper", variant), best(workload, "graphile-worker", variant)
        if hop and gw:
            # every ratio reads "higher is better for hopper"
            value, what = (
                (gw / hop, "graphile-worker / hopper")
                if workload == "latency"
                else (hop / gw, "hopper / graphile-worker")
            )
            out.append({"workload": workload, "what": f"{what}, {label}",
                        "ratio": round(value, 2)})  # fmt: skip
    for workload, variant, raw_variant in (
        ("enqueue-single", "1 producer(s)", RAW_SINGLE),
        ("enqueue-single", "1 producer(s)", RAW_IN_FUNCTION),
        ("enqueue-single", "1 producer(s)", RAW_SINGLE_JOBS),
        ("enqueue-bulk", one_call, RAW_BULK),
        ("enqueue-bulk", one_call, RAW_BULK_JOBS),
    ):
        hop = best(workload, "hopper", variant)
        raw = next((f.value for f in figures if f.variant == raw_variant), None)
        if hop and raw:
            out.append({"workload": workload, "what": f"hopper / {raw_variant}",
                        "ratio": round(hop / raw, 2)})  # fmt: skip
    raw_rates = {f.variant: f.value for f in figures if f.system == "postgresql"}
    # what the function form (SPEC.md 7) and the job table alone cost against the raw rate
    for workload, ceiling, bare in (
        ("enqueue-single", RAW_IN_FUNCTION, RAW_SINGLE),
        ("enqueue-single", RAW_SINGLE_JOBS, RAW_SINGLE),
        ("enqueue-bulk", RAW_BULK_JOBS, RAW_BULK),
    ):
        if raw_rates.get(ceiling) and raw_rates.get(bare):
            out.append({"workload": workload, "what": f"{ceiling} / {bare}",
                        "ratio": round(raw_rates[ceiling] / raw_rates[bare], 2)})  # fmt: skip
    depth = {f.variant.split()[-1]: f.value for f in figures if f.workload == "depth"}
    for kind in ("pending", "finished"):
        if kind in depth and "jobs" in depth:
            out.append({"workload": "depth", "what": f"{kind} / empty table",
                        "ratio": round(depth[kind] / depth["jobs"], 2)})  # fmt: skip
    return out


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"\nhopper bench, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"  {env['hardware']['cpu']}, {env['hardware']['cores']} cores, "
          f"{env['hardware']['memory_mb']:,} MB; Python {env['python']}")  # fmt: skip
    pg = env["postgresql"]
    print(
        f"  {pg['version'].split(',')[0]}; fsync={pg['fsync']}, synchronous_commit="
        f"{pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']}\n"
    )
    print(f"{'workload':<15} {'system':<16} {'variant':<34} {'value':>12}  unit")
    for f in report["results"]:
        extra = ""
        if f["workload"] == "latency":
            extra = "  (p95 {p95:.1f}, p99 {p99:.1f}, max {max:.1f} ms)".format(**f["extra"])
        print(f"{f['workload']:<15} {f['system']:<16} {f['variant']:<34} {f['value']:>12,.1f}"
              f"  {f['unit']}{extra}")  # fmt: skip
    if report["ratios"]:
        print()
        for r in report["ratios"]:
            print(f"{r['workload']:<15} {r['what']:<58} {r['ratio']:>6.2f}x")
    for note in report["notes"]:
        print(f"note: {note}")


def run_bench(
    dsn: str | None,
    output: Path | None,
    workloads: list[str],
    quick: bool,
    repeat: int,
    compare: str | None,
) -> dict[str, Any]:
    from hopper._embedded import EmbeddedPostgres

    server = None
    if dsn is None:
        say("starting a throwaway PostgreSQL (fsync and synchronous_commit on) ...")
        server = EmbeddedPostgres(
            {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        ).start()
        dsn = server.dsn
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hopper-bench"
        run = Run(dsn, Sizes.quick() if quick else Sizes(), repeat, compare == "graphile-worker",
                  cache)  # fmt: skip
        for workload in workloads:
            say(f"{workload} ...")
            getattr(run, workload.replace("-", "_"))()
        report = {
            "environment": environment(dsn),
            "sizes": asdict(run.sizes),
            "repeat": repeat,
            "results": [asdict(f) for f in run.figures],
            "ratios": ratios(run.figures, run.sizes),
            "notes": run.notes,
        }
    finally:
        if server is not None:
            server.stop()
    print_report(report)
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {output}")
    return report
