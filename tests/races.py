"""Thread harnesses for tests that race callers against each other."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def at_once(*actions: Callable[[], T]) -> list[T]:
    """Runs the actions at the same moment, each in its own thread, and returns
    their results in order; fails with the errors if any action raised."""
    barrier = threading.Barrier(len(actions))
    results: list[T | None] = [None] * len(actions)
    errors: list[BaseException] = []

    def start(index: int, action: Callable[[], T]) -> None:
        try:
            barrier.wait()
            results[index] = action()
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=start, args=item) for item in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results  # type: ignore[return-value]


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
