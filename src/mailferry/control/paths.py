"""Where the control socket lives, and how to name it within sockaddr_un's 108 bytes.
Shared by the server and the client (which must not import the server's machinery)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SOCKET_NAME = "control.sock"
_SUN_PATH_MAX = 107  # sockaddr_un's sun_path, less the terminating NUL


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


@contextlib.contextmanager
def bindable(path: Path) -> Iterator[str]:
    """A name for ``path`` short enough for a Unix socket address. A long path (a deep data
    directory) goes through the folder's file descriptor in /proc/self/fd (Linux)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
