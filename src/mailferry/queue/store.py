"""The durable queue store: a message is on disk and fsynced BEFORE the client hears 250.

Layout under ``<data_dir>/queue``:
- ``tmp/``   files being written; never delivered; removed at startup (a crash mid-write).
- ``msg/``   one file per accepted message: envelope JSON line, then the message with our
             Received header. A file appears here only by ``rename`` after its fsync, so a
             partial file is never seen by delivery.

Group commit: every message that finished DATA while an fsync was running waits for the next
one, and that single batch (one thread job: fdatasync each file, rename each, fsync the folder
once) covers them all. Each 250 goes out only after the batch holding its message returns, so
durability does not cap throughput at one fsync round-trip per message.

Must not: know SMTP, policy or delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mailferry.envelope import Envelope

log = logging.getLogger("mailferry.queue")

_SPILL = 1 << 20  # messages above 1 MiB are spooled to a file while they arrive


class Spool:
    """Where DATA goes while it arrives: memory first, a file in ``tmp/`` past 1 MiB."""

    __slots__ = ("_chunks", "_file", "_path", "_size")

    def __init__(self, path: Path) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._path = path
        self._file = None

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self._size > _SPILL:
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed in commit/discard
            self._file.writelines(self._chunks)
            self._chunks = []

    @property
    def size(self) -> int:
        return self._size

    def in_memory(self) -> bytes | None:
        return b"".join(self._chunks) if self._file is None else None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        self._chunks = []


@dataclass
class _Pending:
    msgid: str
    parts: list[bytes]
    spool: Spool
    future: asyncio.Future[None]
    error: OSError | None = None


class QueueStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.msg = root / "msg"
        for d in (self.tmp, self.msg):
            d.mkdir(parents=True, exist_ok=True)
        self._pending: list[_Pending] = []
        self._committing = False

    # --- receiving --------------------------------------------------------------------------
    def spool(self, msgid: str) -> Spool:
        return Spool(self.tmp / f"{msgid}.body")

    async def commit(self, envelope: Envelope, header: bytes, spool: Spool) -> None:
        """Write envelope + header + body and return once it is durable (fsynced and renamed).

        All file work happens in the batch's worker thread: creating, renaming and syncing files
        take ext4's journal, and doing them on the event loop would stall every other session
        while another thread's fsync holds it.
        """
        body = spool.in_memory()
        head = envelope.to_line() + header
        parts = [head + body] if body is not None and len(body) < 65536 else [head]
        if body is not None and len(body) >= 65536:
            parts.append(body)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(envelope.msgid, parts, spool, future))
        if not self._committing:
            self._start_batch()
        await future

    def _start_batch(self) -> None:
        batch, self._pending = self._pending, []
        self._committing = True
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, self._sync_batch, batch)
        job.add_done_callback(lambda f: self._batch_done(f, batch))

    def _batch_done(self, job: asyncio.Future[None], batch: list[_Pending]) -> None:
        self._committing = False
        exc = job.exception()
        for p in batch:
            if p.future.done():
                continue
            if p.error is not None or exc is not None:
                p.future.set_exception(p.error or exc)  # type: ignore[arg-type]
            else:
                p.future.set_result(None)
        if self._pending:
            self._start_batch()

    def _sync_batch(self, batch: list[_Pending]) -> None:
        """Worker thread: write every file of the batch, sync them, then publish them by rename.
        A message whose write fails gets its own error; the others still commit."""
        tmp_dir, msg_dir = str(self.tmp), str(self.msg)
        opened: list[tuple[int, _Pending]] = []
        try:
            for p in batch:
                # O_EXCL: a message ID collision must fail loudly, never overwrite a message.
                path = f"{tmp_dir}/{p.msgid}"
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except OSError as exc:
                    p.error = exc
                    p.spool.discard()
                    continue
                opened.append((fd, p))
                try:
                    _write_all(fd, p.parts)
                    if p.spool.in_memory() is None:
                        _copy_spilled(p.spool, fd)
                except OSError as exc:
                    p.error = exc
            for fd, p in opened:
                if p.error is None:
                    try:
                        os.fdatasync(fd)
                    except OSError as exc:
                        p.error = exc
        finally:
            for fd, p in opened:
                os.close(fd)
                p.spool.discard()
        for _fd, p in opened:
            src = f"{tmp_dir}/{p.msgid}"
            if p.error is None:
                try:
                    os.rename(src, f"{msg_dir}/{p.msgid}")
                    continue
                except OSError as exc:
                    p.error = exc
            with contextlib.suppress(OSError):
                os.unlink(src)
        fsync_dir(self.msg)

    # --- reading and removing ----------------------------------------------------------------
    def path(self, msgid: str) -> Path:
        return self.msg / msgid

    def read(self, msgid: str) -> tuple[Envelope, bytes]:
        data = (self.msg / msgid).read_bytes()
        nl = data.index(b"\n")
        return Envelope.from_line(data[:nl]), data[nl + 1:]

    def remove(self, msgid: str) -> None:
        (self.msg / msgid).unlink(missing_ok=True)

    def recover(self) -> list[str]:
        """At startup: drop partial files (never acknowledged), list what is queued."""
        for p in self.tmp.iterdir():
            log.info("queue: removing partial file %s left by a crash", p.name)
            p.unlink(missing_ok=True)
        return sorted(p.name for p in self.msg.iterdir() if not p.name.startswith("."))


def _write_all(fd: int, parts: list[bytes]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def _copy_spilled(spool: Spool, fd: int) -> None:
    spool._file.flush()  # type: ignore[union-attr]
    with open(spool._path, "rb") as src:
        while chunk := src.read(1 << 20):
            _write_all(fd, [chunk])


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
