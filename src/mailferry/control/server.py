"""The control socket: ``<data_dir>/control.sock``, a Unix socket speaking JSON lines.

One request a line, one response a line, as many as the client likes on one connection::

    {"op": "list"}                         → {"ok": true, "result": [...]}
    {"op": "show", "id": "MF7Q2K9X3A1"}    → {"ok": false, "error": "no message ... in the queue"}
    {"op": "flush", "domain": "b.test"}

Who may use it: the socket file is mode 0600, and the server checks every client's uid with
SO_PEERCRED (the kernel's word, not the client's): the uid the server runs as, or root. Anyone
else gets one ``permission denied`` response and the connection is closed.

A socket file left by a killed server is replaced at start (nothing answers on it); a live one
means another server uses this data directory, and this one refuses to start.
Must not: know what the operations do (service.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

from mailferry.control.paths import bindable
from mailferry.control.service import ControlError, QueueControl

log = logging.getLogger("mailferry.control")

_MAX_REQUEST = 65536  # bytes in one request line


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def allowed(uid: int, server_uid: int) -> bool:
    """Root, or the user the server runs as."""
    return uid == 0 or uid == server_uid


def replace_stale(path: Path) -> None:
    """Remove a socket file left by a killed server. OSError(EADDRINUSE) when a server answers
    on it: another mailferry uses this data directory (the daemon checks this before it
    touches the queue, and refuses to start)."""
    if not os.path.lexists(path):
        return
    with bindable(path) as name, socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(name)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOENT):
                raise
        else:
            raise OSError(errno.EADDRINUSE, f"another mailferry answers on {path}")
    log.info("control: replacing the stale socket %s (left by a server that was killed)",
             path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class ControlServer:
    def __init__(self, control: QueueControl, path: Path) -> None:
        self._control = control
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._uid = os.geteuid()
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the socket. OSError when another server is listening there already."""
        replace_stale(self.path)
        with bindable(self.path) as name:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(name)
                # Before listen(): nobody but the owner (and root) can connect from here on.
                os.chmod(name, 0o600)
            except OSError:
                sock.close()
                raise
        self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                       limit=_MAX_REQUEST)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if not allowed(uid, self._uid):
                log.warning("control: refused a client with uid %s", uid)
                await _send(writer, {"ok": False, "error": (
                    f"permission denied: uid {uid} may not control this mailferry (it runs as "
                    f"uid {self._uid}; only that user and root may)")})
                return
            actor = f"admin (control socket, uid {uid})"
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the limit
                    await _send(writer, {"ok": False, "error": "request too long"})
                    return
                if not line:
                    return
                await _send(writer, await self._answer(line, actor))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, line: bytes, actor: str) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON request"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'a request is {"op": "...", ...}'}
        op = request["op"]
        control = self._control
        try:
            if op == "list":
                result: Any = await control.list()
            elif op == "status":
                result = await control.status()
            elif op == "show":
                result = await control.show(request.get("id"))  # type: ignore[arg-type]
            elif op == "flush":
                result = await control.flush(request.get("id"), request.get("domain"),
                                             actor=actor)
            elif op in ("hold", "release", "delete", "bounce"):
                result = await getattr(control, op)(request.get("id"), actor=actor)
            else:
                return {"ok": False, "error": f"unknown operation {op!r}"}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: the client gets one line, the log the traceback
            log.exception("control: %s failed", op)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}


async def _send(writer: asyncio.StreamWriter, response: dict) -> None:
    writer.write(json.dumps(response, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()
