"""Job options as the Python API takes them, turned into add_job's arguments."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# a bare number is seconds, as the CLI's options (always text) are documented to take
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: float | timedelta | str, argument: str = "delay") -> timedelta:
    """Seconds (int or float, or their text), a timedelta, or "5s" "5m" "1h" "2d"."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{argument} must be seconds, a timedelta or like '5m' (got {value!r})")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := DURATION.match(value)):
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f"{argument} must be seconds, a timedelta or a number with a unit s, m, h or d "
            f"such as '5m' (got {value!r})"
        )
    if seconds < 0:
        raise ValueError(f"{argument} must not be negative (got {value!r})")
    return timedelta(seconds=seconds)


def as_list(value: Any, argument: str, of: str) -> list[Any]:
    """value as a list; a str (which would be taken for a list of characters) or
    a value that is not iterable raises, naming the argument."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{argument} must be a list of {of} (got {value!r})")
    return list(value)


def aware(value: Any, argument: str = "run_at") -> Any:
    """value, unless it is a naive datetime: PostgreSQL would read that in the
    session's TimeZone, which need not be the caller's."""
    if isinstance(value, datetime) and value.utcoffset() is None:
        raise ValueError(
            f"{argument} must be a timezone-aware datetime (got {value!r}), such as"
            " datetime.now(UTC) + timedelta(minutes=5); or give delay"
        )
    return value


def jsonable(payload: Any) -> Any:
    """A pydantic model as its JSON form, which its handler's model validates back;
    anything else as given. (Only an imported pydantic can have made a model.)"""
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(payload, pydantic.BaseModel):
        return payload.model_dump(mode="json")
    return payload


def json_text(value: Any, argument: str) -> str:
    """value as JSON text. NaN and the infinities, which JSON lacks, raise here: the
    database would refuse the text without naming the argument."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{argument} cannot be stored as JSON: {error}") from None


def batch_ref(index: int) -> int:
    """A depends_on entry naming the spec at 0-based ``index`` of the same add_jobs call."""
    if index < 0:
        raise ValueError(f"batch_ref index must be 0 or more (got {index})")
    return -(index + 1)


INTERVAL_OPTIONS = ("timeout", "backoff_delay", "backoff_max")


@dataclass(frozen=True)
class JobSpec:
    """One job for add_jobs; fields mirror add_job's parameters."""

    identifier: str
    payload: Any = None
    queue_name: str | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    job_key: str | None = None
    priority: int | None = None
    flags: list[str] | None = None
    job_key_mode: str | None = None
    tags: list[str] | None = None
    depends_on: list[int] | None = None
    depends_on_tags: list[str] | None = None
    timeout: float | timedelta | str | None = None
    backoff: str | None = None
    backoff_delay: float | timedelta | str | None = None
    backoff_max: float | timedelta | str | None = None
    dead_letter: str | None = None
    delay: float | timedelta | str | None = field(default=None, kw_only=True)

    def as_json(self) -> dict[str, Any]:
        """The spec as an element of add_jobs' jsonb form (None values left out); a
        delay is left to the caller, who adds it to the database's clock."""
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give run_at or delay, not both")
        values: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is None or name == "delay":
                continue
            if name == "payload":
                value = jsonable(value)
            elif name in INTERVAL_OPTIONS:
                value = f"{parse_duration(value, name).total_seconds()} seconds"
            elif isinstance(value, datetime):
                value = aware(value, name).isoformat()
            values[name] = value
        return values

    def delay_seconds(self) -> float | None:
        return None if self.delay is None else parse_duration(self.delay).total_seconds()
