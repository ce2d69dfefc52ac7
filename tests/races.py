"""Thread harnesses for tests that race producers against workers."""

from __future__ import annotations

import threading


def run_producers_and_workers(
    producers: list[threading.Thread], workers: list[threading.Thread], stop: threading.Event
) -> None:
    """Starts every thread, waits for the producers, then sets stop and waits
    for the workers (which loop until stop is set)."""
    for thread in producers + workers:
        thread.start()
    for thread in producers:
        thread.join()
    stop.set()
    for thread in workers:
        thread.join()
