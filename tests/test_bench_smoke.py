"""`hopper bench` runs and writes its JSON (a smoke test at tiny sizes, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_quick_writes_a_report(dsn, tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "hopper", "--database-url", dsn, "bench", "--quick",
         "--workloads", "enqueue-single,enqueue-bulk,process,depth", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    workloads = {figure["workload"] for figure in report["results"]}
    assert workloads == {"enqueue-single", "enqueue-bulk", "process", "depth"}
    assert all(figure["value"] > 0 for figure in report["results"])
    assert report["environment"]["postgresql"]["version"].startswith("PostgreSQL 15")
    assert "hopper / raw single-row INSERT" in result.stdout
    assert "that INSERT in a function / raw single-row INSERT" in result.stdout
    raw = {f["variant"] for f in report["results"] if f["system"] == "postgresql"}
    assert raw == {
        "raw single-row INSERT", "that INSERT in a function", "that INSERT into a copy of _jobs",
        "raw INSERT ... SELECT", "INSERT ... SELECT, copy of _jobs",
    }  # fmt: skip
    assert "hopper / that INSERT into a copy of _jobs" in result.stdout
    assert "INSERT ... SELECT, copy of _jobs / raw INSERT ... SELECT" in result.stdout
