"""LISTEN for new jobs and cancellation requests; reconnects on its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

logger = logging.getLogger("hopper.worker")


async def listen(
    dsn: str,
    schema: str,
    wake: asyncio.Event,
    on_cancel: Callable[[int], None],
    schedules_changed: asyncio.Event | None = None,
) -> None:
    """Sets ``wake`` on every new-jobs notification, ``schedules_changed`` on the
    one add_schedule sends on that channel, and calls ``on_cancel`` with the job id
    of every cancellation request, until cancelled. A lost connection is reopened
    with backoff; the worker's poll and heartbeat cover the gap."""
    jobs_channel, cancel_channel = f"{schema}_jobs", f"{schema}_cancel"
    delay = 0.1
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="hopper-listener"
            )
            async with conn:
                for channel in (jobs_channel, cancel_channel):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                delay = 0.1
                wake.set()  # jobs may have arrived while we were not listening
                async for notification in conn.notifies():
                    if notification.channel == cancel_channel:
                        job_id = _job_id(notification.payload)
                        if job_id is not None:
                            on_cancel(job_id)
                    elif notification.payload == "schedules":
                        if schedules_changed is not None:
                            schedules_changed.set()
                    else:
                        wake.set()
        except psycopg.OperationalError as error:
            logger.warning("listener lost its connection (%s); reconnecting in %.1fs", error, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _job_id(payload: str) -> int | None:
    """The job id of a cancellation request. Any role may NOTIFY any channel, so
    anything else is logged and ignored: raising here would end the listener."""
    try:
        return int(payload)
    except ValueError:
        logger.warning("ignored a cancellation notification that names no job: %r", payload[:100])
        return None
