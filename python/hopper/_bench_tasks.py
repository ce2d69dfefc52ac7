"""What `hopper bench` needs wherever the CLI runs, and no more: its workloads' names
(the CLI's options) and the handlers of its worker processes."""

from __future__ import annotations

import os
import time

from hopper._tasks import JobContext, TaskRegistry

WORKLOADS = ("enqueue-single", "enqueue-bulk", "process", "latency", "depth", "startup")

tasks = TaskRegistry()


@tasks.task("noop")
async def noop(payload: dict, job: JobContext) -> None:
    return None


@tasks.task("latency")
async def latency(payload: dict, job: JobContext) -> None:
    """Records when the handler started, for add -> start latency."""
    started = time.time()
    with open(os.environ["HOPPER_BENCH_LATENCY_FILE"], "a") as out:
        out.write(f"{payload['n']} {started}\n")
