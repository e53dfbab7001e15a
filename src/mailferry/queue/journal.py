"""Append-only journal segments: the fast path of the durable queue.

Most messages live in the queue for milliseconds (local delivery follows at once), so giving each
its own file costs a create, a rename, an unlink and their journal commits on every message. The
journal instead appends every message of a group-commit batch to one segment file with one
``write`` and one ``fdatasync``; when delivery is done it appends a small DONE record (not synced:
recovery is idempotent, see delivery/maildir.py), and a segment whose messages are all done is
deleted. Messages that must wait (remote recipients) are moved to their own files by the store.

Records, so that a person can still read a segment with ``less``::

    M <msgid> <length>\\n<payload: envelope JSON line + message>\\n
    D <msgid>\\n

A record cut short by a crash (only possible for a batch whose fsync never returned, so never
acknowledged with 250) ends the scan of that segment.

Called from worker threads; a lock serialises appends and index updates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from pathlib import Path

from mailferry.durable import fsync_dir

log = logging.getLogger("mailferry.queue")

MAX_SEGMENT = 64 << 20  # start a new segment past this size


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._where: dict[str, tuple[int, int, int]] = {}  # msgid → (segment, offset, length)
        self._live: Counter[int] = Counter()  # segment → messages not yet done
        self._recovered: list[str] = []
        self._scan_existing()
        self._seq = max(self._segments(), default=0) + 1
        self._fd = -1
        self._size = 0

    # --- paths --------------------------------------------------------------------------------
    def _path(self, seq: int) -> str:
        return f"{self.folder}/{seq:08d}.jnl"

    def _segments(self) -> list[int]:
        return sorted(int(p.name[:-4]) for p in self.folder.glob("*.jnl") if p.name[:-4].isdigit())

    # --- startup --------------------------------------------------------------------------------
    def _scan_existing(self) -> None:
        """Index every undone message of old segments; delete segments left with nothing to do.
        Old segments are never appended to again, so a torn tail is never extended."""
        found = scan(self.folder)
        self._where.update(found)
        self._live.update(seq for seq, _start, _length in found.values())
        for seq in self._segments():
            if self._live[seq] <= 0:
                self._live.pop(seq, None)
                os.unlink(self._path(seq))
        self._recovered.extend(found)

    def recovered(self) -> list[str]:
        """Message IDs found undone at startup."""
        return list(self._recovered)

    # --- appending ------------------------------------------------------------------------------
    def _ensure_segment(self) -> None:
        if self._fd >= 0 and self._size < MAX_SEGMENT:
            return
        if self._fd >= 0:
            os.close(self._fd)
            old = self._seq
            self._seq += 1
            if self._live[old] <= 0:
                self._drop(old)
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        fsync_dir(self.folder)  # the new segment's name must survive a crash too

    def append(self, items: list[tuple[str, list[bytes]]]) -> None:
        """Append message records and make them durable: one write, one fdatasync."""
        if not items:
            return
        with self._lock:
            self._ensure_segment()
            chunks: list[bytes] = []
            offset = self._size
            placed = []
            for msgid, parts in items:
                if msgid in self._where:
                    # Never two live messages with one ID: the caller reports the collision.
                    raise FileExistsError(f"message {msgid} is already queued")
                length = sum(len(p) for p in parts)
                head = f"M {msgid} {length}\n".encode()
                chunks.append(head)
                chunks.extend(parts)
                chunks.append(b"\n")
                placed.append((msgid, offset + len(head), length))
                offset += len(head) + length + 1
            data = b"".join(chunks)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._size += len(data)
            for msgid, start, length in placed:
                self._where[msgid] = (self._seq, start, length)
            self._live[self._seq] += len(placed)
            # A duplicate, so that a segment rotation in another thread cannot close it
            # under our fdatasync (which runs outside the lock: others may append meanwhile).
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def done(self, msgids: list[str], *, durable: bool = False) -> None:
        """Record that these messages need nothing more. Not synced by default: losing a DONE
        record in a crash only makes recovery look at the message again, and local delivery
        is idempotent. ``durable`` syncs it: a remote server said 250, and a crash must not
        make us send the message again."""
        with self._lock:
            records = []
            for msgid in msgids:
                where = self._where.pop(msgid, None)
                if where is None:
                    continue
                records.append(f"D {msgid}\n".encode())
                seq = where[0]
                self._live[seq] -= 1
                if self._live[seq] <= 0 and seq != self._seq:
                    self._drop(seq)
            if records:
                self._ensure_segment()
                data = b"".join(records)
                os.write(self._fd, data)
                self._size += len(data)
            fd = os.dup(self._fd) if durable and records else -1
        if fd >= 0:
            try:
                os.fdatasync(fd)  # outside the lock, like append()
            finally:
                os.close(fd)

    def _drop(self, seq: int) -> None:
        del self._live[seq]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(seq))

    # --- reading --------------------------------------------------------------------------------
    def __contains__(self, msgid: str) -> bool:
        return msgid in self._where

    def read(self, msgid: str) -> bytes:
        seq, start, length = self._where[msgid]
        fd = os.open(self._path(seq), os.O_RDONLY)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def pending(self) -> list[str]:
        return list(self._where)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                if self._live[self._seq] <= 0:
                    self._drop(self._seq)


def scan(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Read-only: every message in the segments under ``folder`` without a DONE record, as
    msgid → (segment, offset, length). Also what tests and tools use to look at a live queue."""
    found: dict[str, tuple[int, int, int]] = {}
    for path in sorted(folder.glob("*.jnl")):
        if not path.name[:-4].isdigit():
            continue
        seq = int(path.name[:-4])
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            head = data[pos:nl].split(b" ")
            if head[0] == b"M" and len(head) == 3 and head[2].isdigit():
                length = int(head[2])
                start = nl + 1
                if start + length + 1 > len(data):
                    log.warning("journal %s: message record cut short at %d (a crash before it"
                                " was acknowledged); ignored", path.name, pos)
                    break
                found[head[1].decode()] = (seq, start, length)
                pos = start + length + 1
            elif head[0] == b"D" and len(head) == 2:
                found.pop(head[1].decode(), None)
                pos = nl + 1
            else:
                log.warning("journal %s: unreadable record at %d; rest ignored", path.name, pos)
                break
    return found
