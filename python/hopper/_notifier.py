"""LISTEN on the schema's jobs channel and wake the worker; reconnects on its own."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg import sql

logger = logging.getLogger("hopper.worker")


async def listen_for_jobs(dsn: str, schema: str, wake: asyncio.Event) -> None:
    """Sets ``wake`` on every notification until cancelled. A lost connection is
    reopened with backoff; the worker's poll covers the gap."""
    channel = sql.Identifier(f"{schema}_jobs")
    delay = 0.1
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="hopper-listener"
            )
            async with conn:
                await conn.execute(sql.SQL("LISTEN {}").format(channel))
                delay = 0.1
                wake.set()  # jobs may have arrived while we were not listening
                async for _ in conn.notifies():
                    wake.set()
        except psycopg.OperationalError as error:
            logger.warning("listener lost its connection (%s); reconnecting in %.1fs", error, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
