"""graphile-worker for `hopper bench --compare graphile-worker`: installed from the
npm registry into a cache folder and run as its own CLI, with its documented fastest
settings (local queue, batched completion) and no log line per completed job."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VERSION = "0.18.0"

NOOP_TASK = "module.exports = async () => {};\n"
LATENCY_TASK = """const fs = require("fs");
module.exports = async (payload) => {
  const started = (performance.timeOrigin + performance.now()) / 1000;
  fs.appendFileSync(process.env.GW_LATENCY_FILE, `${payload.n} ${started}\\n`);
};
"""
# NO_LOG_SUCCESS (set as graphile-worker's own perf scripts do) also silences the
# "Worker connected" line, so readiness is printed from the listen-success event
READY_TEXT = "hopper-bench: graphile-worker listening"
CONFIG = f"""const {{ EventEmitter }} = require("events");
const events = new EventEmitter();
events.on("pool:listen:success", () => console.log("{READY_TEXT}"));
module.exports = {{
  worker: {{
    events,
    localQueue: {{ size: Number(process.env.GW_LOCAL_QUEUE || -1) }},
    completeJobBatchDelay: Number(process.env.GW_BATCH_DELAY || -1),
    failJobBatchDelay: Number(process.env.GW_BATCH_DELAY || -1),
  }},
}};
"""


class GraphileUnavailable(RuntimeError):
    pass


def install(cache: Path) -> Path:
    """The folder holding graphile-worker (installed on first use)."""
    folder = cache / f"graphile-worker-{VERSION}"
    if (folder / "node_modules" / ".bin" / "graphile-worker").exists():
        return folder
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise GraphileUnavailable("node and npm are not installed; skipping graphile-worker")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text('{"name": "hopper-bench-graphile", "private": true}\n')
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", f"graphile-worker@{VERSION}"],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise GraphileUnavailable(f"npm install graphile-worker failed: {result.stderr[-500:]}")
    return folder


class Graphile:
    def __init__(self, folder: Path, dsn: str, schema: str) -> None:
        self.folder = folder
        self.dsn = dsn
        self.schema = schema
        tasks = folder / "tasks"
        tasks.mkdir(exist_ok=True)
        (tasks / "noop.js").write_text(NOOP_TASK)
        (tasks / "latency.js").write_text(LATENCY_TASK)
        (folder / "graphile.config.js").write_text(CONFIG)

    def command(self, *args: str) -> list[str]:
        return [
            str(self.folder / "node_modules" / ".bin" / "graphile-worker"),
            "--connection", self.dsn, "--schema", self.schema,
            "--config", str(self.folder / "graphile.config.js"), *args,
        ]  # fmt: skip

    def install_schema(self) -> None:
        subprocess.run(
            self.command("--schema-only"), cwd=self.folder, check=True, capture_output=True,
            timeout=120,
        )  # fmt: skip

    def start_worker(
        self, concurrency: int, local_queue: int, batch_delay: int, log: Path, **env: str
    ) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "GW_LOCAL_QUEUE": str(local_queue),
            "GW_BATCH_DELAY": str(batch_delay),
            "NO_LOG_SUCCESS": "1",
            **env,
        }
        with open(log, "wb") as out:
            return subprocess.Popen(
                self.command("--jobs", str(concurrency), "--max-pool-size", str(concurrency + 2)),
                cwd=self.folder, env=environment, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
