"""The client side of the control socket (``mailferry queue …``, ``mailferry status``).

Blocking and small: connect, send one JSON line, read one JSON line. Failures become
:class:`ControlClientError` with a sentence a person can act on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
from pathlib import Path
from typing import Any

from mailferry.control.paths import bindable, socket_path

_TIMEOUT = 120.0  # seconds: `show` reads the day's transaction logs


class ControlClientError(Exception):
    """The server is not running, refused us, or answered with an error."""


def request(data_dir: Path, op: str, **args: Any) -> Any:
    """Send one operation to the server whose data directory is ``data_dir``; its result."""
    path = socket_path(data_dir)
    payload = json.dumps({"op": op, **{k: v for k, v in args.items() if v is not None}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT)
        try:
            with bindable(path) as name:
                sock.connect(name)
        except FileNotFoundError:
            raise ControlClientError(
                f"mailferry is not running (no control socket at {path})") from None
        except ConnectionRefusedError:
            raise ControlClientError(
                f"mailferry is not running (nothing answers on {path})") from None
        except PermissionError:
            raise ControlClientError(
                f"permission denied: cannot open the control socket {path} (run this as the "
                "user mailferry runs as, or as root)") from None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise ControlClientError(
                    f"mailferry is not running (no control socket at {path})") from None
            raise ControlClientError(f"cannot reach mailferry at {path}: "
                                     f"{exc.strerror or exc}") from None
        try:
            # A refusal is sent before the request is read: if sending fails, it is there to read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload.encode() + b"\n")
            answer = _read_line(sock)
        except TimeoutError:
            raise ControlClientError(f"mailferry did not answer within {_TIMEOUT:g} s") from None
        except OSError as exc:
            raise ControlClientError(f"connection to mailferry lost: "
                                     f"{exc.strerror or exc}") from None
    try:
        response = json.loads(answer)
    except ValueError:
        raise ControlClientError("mailferry sent an answer that is not JSON") from None
    if not isinstance(response, dict):
        raise ControlClientError("mailferry sent an answer that is not an object")
    if not response.get("ok"):
        raise ControlClientError(str(response.get("error") or "the operation failed"))
    return response.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            if not chunks:
                raise ControlClientError("mailferry closed the connection without an answer")
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
