"""A TCP proxy in front of the test server that can lose the server's replies, as a
network that fails after a request went through: the server acts on what it was
sent, and the client never hears of it."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from workerprocs import wait_until


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


def lose_a_claims_reply(conn: psycopg.Connection, proxy: Proxy, job_id: int, queue: str) -> None:
    """A worker behind proxy, idle: unpauses queue, whose one job is job_id, while
    the server's replies are lost; returns once a claim has taken that job (its
    reply never arrived) and the network has failed and come back."""
    proxy.losing_replies.set()
    try:
        conn.execute("SELECT hopper.set_queue(%s, paused => false)", [queue])
        wait_until(
            lambda: conn.execute(
                "SELECT state = 'running' AS taken FROM hopper._jobs WHERE id = %s", [job_id]
            ).fetchone()["taken"],
            10, "a claim of the job, whose reply is lost",
        )  # fmt: skip
        proxy.cut()
    finally:
        proxy.losing_replies.clear()
