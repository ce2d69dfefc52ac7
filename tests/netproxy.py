"""A TCP proxy in front of the test server that can lose the server's replies, as a
network that fails after a request went through: the server acts on what it was
sent, and the client never hears of it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row
from workerprocs import a_call_waits_for_a_lock, wait_until

import hopper


class Proxy:
    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self._server = (str(params["host"]), int(params["port"]))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=self._listener.getsockname()[1])
        self.losing_replies = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Closes every connection made so far, as a failed network would."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def close(self) -> None:
        _close(self._listener)
        self.cut()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self._server)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (replies and self.losing_replies.is_set()):
                    target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextlib.contextmanager
def claim_held_before_its_commit(
    conn: psycopg.Connection, worker: hopper.Worker, queue: str
) -> Iterator[None]:
    """An idle worker of concurrency 1 claims the one job of the paused queue:
    yields while its claim holds the job and waits for the worker's row (taking
    its last free slot, the claim marks the worker not waiting), which another
    session locks; the claim goes on when the block ends. No other claim of the
    worker can be in flight meanwhile."""
    wait_until(lambda: _waiting(conn, worker), 10, "the worker to run dry")
    with psycopg.connect(conn.info.dsn, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT FROM hopper._workers WHERE id = %s FOR UPDATE", [worker.worker_id])
        conn.execute("SELECT hopper.set_queue(%s, paused => false)", [queue])
        wait_until(
            lambda: a_call_waits_for_a_lock(conn, "get_jobs"), 10, "the claim to wait for the row"
        )
        try:
            yield
        finally:
            holder.execute("COMMIT")


def lose_a_claims_reply(
    conn: psycopg.Connection, proxy: Proxy, worker: hopper.Worker, job_id: int, queue: str
) -> None:
    """The claim of job_id commits while the server's replies are lost; returns once
    the network has failed and come back."""
    with claim_held_before_its_commit(conn, worker, queue):
        proxy.losing_replies.set()
    try:
        wait_until(lambda: _state(conn, job_id) == "running", 10, "the claim to commit")
        proxy.cut()
    finally:
        proxy.losing_replies.clear()


def _state(conn: psycopg.Connection, job_id: int) -> str:
    return _value(conn, "SELECT state FROM hopper._jobs WHERE id = %s", [job_id])


def _waiting(conn: psycopg.Connection, worker: hopper.Worker) -> bool:
    query = "SELECT waiting FROM hopper._workers WHERE id = %s"
    return _value(conn, query, [worker.worker_id]) is True


def _value(conn: psycopg.Connection, query: str, params: list) -> Any:
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(query, params).fetchone()
    return None if row is None else row[0]
