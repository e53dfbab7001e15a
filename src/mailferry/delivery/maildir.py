"""Maildir delivery (the qmail Maildir spec): tmp → fsync → rename into new/.

File names are deterministic — ``<received>.<msgid>_<n>.<hostname>`` — so that delivery is
idempotent: after a crash the runner asks :func:`already_delivered` and never writes a second copy
of a message that reached a mailbox before the crash. That is how "delivered exactly once"
survives ``kill -9`` without a second fsync to record each delivery.

Blocking file I/O: called from a worker thread, never from the event loop. Knows nothing of SMTP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mailbox:
    root: Path  # <data_dir>/mail/<domain>/<user>/Maildir

    @classmethod
    def for_address(cls, mail_root: Path, address: str) -> Mailbox:
        local, _, domain = address.rpartition("@")
        # The address was validated at RCPT time; still refuse anything that could walk out of
        # mail_root, because the local part becomes a directory name.
        if not local or "/" in local or local in (".", "..") or "/" in domain or not domain:
            raise ValueError(f"unsafe mailbox name: {address!r}")
        return cls(mail_root / domain.lower() / local.lower() / "Maildir")

    def ensure(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)


def file_name(received_at: float, msgid: str, index: int, hostname: str) -> str:
    host = hostname.replace("/", "\\057").replace(":", "\\072")
    return f"{int(received_at)}.{msgid}_{index}.{host}"


def already_delivered(box: Mailbox, name: str) -> bool:
    """True when ``name`` is in new/ or was moved to cur/ by a mail reader (``name:2,FLAGS``)."""
    if (box.root / "new" / name).exists():
        return True
    cur = box.root / "cur"
    try:
        return any(e.name == name or e.name.startswith(name + ":") for e in os.scandir(cur))
    except FileNotFoundError:
        return False


def write_tmp(box: Mailbox, name: str, parts: list[bytes]) -> tuple[int, Path]:
    """Write the message into tmp/ (not yet visible to readers). Returns the open fd to sync.
    The caller has made sure the Maildir exists (:meth:`Mailbox.ensure`)."""
    tmp = box.root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd, tmp


def publish(box: Mailbox, name: str, tmp: Path) -> None:
    """Move a synced tmp file into new/: from here on the reader sees the whole message."""
    os.rename(tmp, box.root / "new" / name)
