"""The plans of every statement one call runs, read through auto_explain."""

from __future__ import annotations

import re
from typing import Any

import psycopg


def statement_plans(conn: psycopg.Connection, query: str, params: Any, marker: str) -> list[str]:
    """The plans of the statements ``query`` runs, nested ones included; the plan
    of the statement containing ``marker`` (the call itself) first."""
    conn.execute("LOAD 'auto_explain'")
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_analyze = on",
        "auto_explain.log_buffers = on",
        "auto_explain.log_timing = off",
        "auto_explain.log_level = notice",
    ):
        conn.execute(f"SET {setting}")
    conn.execute(query, params)
    conn.execute("SET auto_explain.log_min_duration = -1")
    outer = [p for p in notices if marker in p]
    return outer + [p for p in notices if p not in outer]


def plan_with(plans: list[str], text: str) -> str:
    (plan,) = [p for p in plans if text in p]
    return plan


def shared_buffers_touched(plan: str) -> int:
    first = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    assert first, plan
    return int(first.group(1)) + int(first.group(2) or 0)
