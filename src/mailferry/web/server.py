"""Serving the web app inside the daemon's event loop (uvicorn as a task, not a process).

The daemon binds the socket itself (so a busy port is reported like an SMTP listener's, not by
uvicorn exiting the process) and keeps its own signal handlers: uvicorn's are switched off.
Uvicorn's log lines go to the ``mailferry.http`` logger; no lifespan events (nothing to set up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("mailferry.http")


# Uvicorn's own lines ("Started server process", "Waiting for connections to close") say
# nothing the daemon's banner does not; its warnings and errors still go to the log.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon owns SIGTERM/SIGINT and stops us with stop()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket for the HTTP server (raises OSError like a busy port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class HttpServer:
    """One running web app on one socket."""

    def __init__(self, app: FastAPI, sock: socket.socket, url: str) -> None:
        self.url = url
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                server_header=False, proxy_headers=False,
                                timeout_graceful_shutdown=5)
        self._server = _EmbeddedServer(config)
        self._sock = sock
        self._task: asyncio.Task | None = None
        self._warm_up: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._serve())
        data = getattr(self._server.config.app.state, "data", None)
        if data is not None:
            # Read the recent log now (in a worker thread), not when the first page is asked
            # for: on a large log that takes seconds, which the first visitor would wait.
            self._warm_up = loop.create_task(data.run(lambda: None))

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        except (Exception, SystemExit):  # uvicorn calls sys.exit on a failed startup
            log.exception("the HTTP server stopped")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._warm_up is not None and not self._warm_up.done():
            self._warm_up.cancel()  # the thread finishes its read; nobody waits for it
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()
