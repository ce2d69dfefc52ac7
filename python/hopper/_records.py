"""Records read from hopper's SQL functions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        return self in (JobState.WAITING, JobState.SCHEDULED, JobState.PENDING, JobState.RUNNING)


class Outcome(StrEnum):
    INSERTED = "inserted"
    UPDATED = "updated"
    DEDUPED = "deduped"


@dataclass(frozen=True)
class Job:
    """A job as hopper's functions return it (SPEC.md section 1)."""

    id: int
    task_identifier: str
    payload: Any
    queue_name: str | None
    state: JobState
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    last_error: str | None
    errors: list[dict[str, Any]]
    key: str | None
    flags: list[str] | None
    tags: list[str] | None
    depends_on: list[int] | None
    depends_on_tags: list[str] | None
    locked_at: datetime | None
    locked_by: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    progress: int | None
    timeout: timedelta | None
    revision: int
    cancel_requested: bool
    dead_letter: str | None
    dead_letter_job_id: int | None
    outcome: Outcome | None = None  # set by add_job / add_jobs

    @property
    def deduped(self) -> bool:
        return self.outcome == Outcome.DEDUPED

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        values: dict[str, Any] = {name: row.get(name) for name in _JOB_FIELDS}
        values["state"] = JobState(values["state"])
        if values["outcome"] is not None:
            values["outcome"] = Outcome(values["outcome"])
        return cls(**values)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Job:
        """From a row of hopper.jobs in its column order (the worker's fast path).
        Fills the instance dict directly: a frozen dataclass's __init__ sets each
        of the 30 fields through object.__setattr__, twice the cost per job."""
        job = object.__new__(cls)
        fields = job.__dict__
        fields.update(zip(JOB_COLUMNS, values, strict=True))
        fields["state"] = _STATES[fields["state"]]
        fields["outcome"] = None
        return job

    @classmethod
    def from_added_values(cls, values: Sequence[Any]) -> Job:
        """From a row of hopper.added_job in ADDED_JOB_SELECT_LIST's order: the
        columns of hopper.jobs, then the outcome (a producer's fast path)."""
        job = cls.from_values(values[:-1])
        job.__dict__["outcome"] = None if values[-1] is None else Outcome(values[-1])
        return job


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_STATES = {state.value: state for state in JobState}
# the columns of hopper.jobs, in order; hopper.added_job has them and the outcome
JOB_COLUMNS = _JOB_FIELDS[:-1]
# Statements name these columns rather than "*": a column a later migration adds to
# the record then changes neither what they return nor, once psycopg has prepared
# them, their result type, which PostgreSQL refuses to see change.
JOB_SELECT_LIST = ", ".join(f'"{name}"' for name in JOB_COLUMNS)
ADDED_JOB_SELECT_LIST = ", ".join(f'"{name}"' for name in _JOB_FIELDS)
