"""The durable queue store: a message is on disk and fsynced BEFORE the client hears 250.

Layout under ``<data_dir>/queue``:
- ``journal/`` append-only segments (journal.py) holding the messages of each group-commit batch:
               the fast path, for every message that fits in memory (up to 1 MiB).
- ``msg/``     one file per message for the rest: messages spooled to disk while they arrived,
               and messages that must wait for remote delivery (moved here from the journal).
               Envelope JSON line, then the message with our Received header. A file appears here
               only by ``rename`` after its fsync, so a partial file is never seen.
- ``tmp/``     files being written; removed at startup (a crash mid-write, never acknowledged).

Group commit: every message that finished DATA while a batch was being synced waits for the next
batch, and one worker-thread job makes the whole batch durable (one journal write and fdatasync,
plus the rare separate files). Each 250 goes out only after the batch holding its message
returned, so durability does not cost one fsync round-trip per message.

Must not: know SMTP, policy or delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mailferry.durable import fsync_dir
from mailferry.envelope import Envelope
from mailferry.queue.journal import Journal

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
    def __init__(self, root: Path, *, commit_window: float = 0.0) -> None:
        self.root = root
        self._window = commit_window  # seconds a batch waits for company before it syncs
        self.tmp = root / "tmp"
        self.msg = root / "msg"
        for d in (self.tmp, self.msg):
            d.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(root / "journal")
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
        if envelope.msgid in self.journal:
            raise FileExistsError(f"message {envelope.msgid} is already queued")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(envelope.msgid, parts, spool, future))
        if not self._committing:
            self._committing = True
            if self._window > 0:
                asyncio.get_running_loop().call_later(self._window, self._start_batch)
            else:
                self._start_batch()
        await future

    def _start_batch(self) -> None:
        batch, self._pending = self._pending, []
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
            self._committing = True
            self._start_batch()

    def _sync_batch(self, batch: list[_Pending]) -> None:
        """Worker thread: make every message of the batch durable. In-memory messages go to the
        journal in one write + fdatasync; spooled ones to their own files. A message whose write
        fails gets its own error; the others still commit."""
        small = [p for p in batch if p.spool.in_memory() is not None]
        large = [p for p in batch if p.spool.in_memory() is None]
        try:
            self.journal.append([(p.msgid, p.parts) for p in small])
        except OSError as exc:
            for p in small:
                p.error = exc
        finally:
            for p in small:
                p.spool.discard()
        if large:
            self._write_files(large)

    def _write_files(self, batch: list[_Pending]) -> None:
        tmp_dir, msg_dir = str(self.tmp), str(self.msg)
        opened: list[tuple[int, _Pending]] = []
        try:
            for p in batch:
                # O_EXCL: a message ID collision must fail loudly, never overwrite a message.
                try:
                    fd = os.open(f"{tmp_dir}/{p.msgid}", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                 0o600)
                except OSError as exc:
                    p.error = exc
                    p.spool.discard()
                    continue
                opened.append((fd, p))
                try:
                    _write_all(fd, p.parts)
                    if p.spool.in_memory() is None:
                        _copy_spilled(p.spool, fd)
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
    def read(self, msgid: str) -> tuple[Envelope, bytes]:
        data = self.journal.read(msgid) if msgid in self.journal \
            else (self.msg / msgid).read_bytes()
        nl = data.index(b"\n")
        return Envelope.from_line(data[:nl]), data[nl + 1:]

    def read_start(self, msgid: str, limit: int = 65536) -> tuple[Envelope, bytes]:
        """The envelope and at most ``limit`` bytes of the message after it (for listing the
        queue: a large message's body is never read). FileNotFoundError when it is gone."""
        if msgid in self.journal:
            try:
                data = self.journal.read(msgid)
            except KeyError:  # done meanwhile, by a worker thread
                raise FileNotFoundError(msgid) from None
            nl = data.index(b"\n")
            return Envelope.from_line(data[:nl]), data[nl + 1:nl + 1 + limit]
        with open(self.msg / msgid, "rb") as f:
            first = f.readline()
            return Envelope.from_line(first), f.read(limit)

    def remove(self, msgids: list[str]) -> None:
        """These messages need nothing more (worker thread or startup)."""
        in_journal = [m for m in msgids if m in self.journal]
        self.journal.done(in_journal)
        for msgid in msgids:
            if msgid not in in_journal:
                (self.msg / msgid).unlink(missing_ok=True)

    def in_journal(self, msgid: str) -> bool:
        return msgid in self.journal

    def finish_delivered(self, msgids: list[str]) -> None:
        """Remote delivery of these journal messages is complete: record it durably (worker
        thread). This is their outcome record, so no state file is needed on this path."""
        self.journal.done([m for m in msgids if m in self.journal], durable=True)
        for msgid in msgids:
            (self.msg / msgid).unlink(missing_ok=True)

    def keep(self, msgid: str) -> None:
        """A message that must wait (remote recipients): move it out of the journal into its own
        file, durably, so that journal segments can be deleted. Worker thread."""
        if msgid not in self.journal:
            return
        data = self.journal.read(msgid)
        tmp = f"{self.tmp}/{msgid}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, [data])
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.msg / msgid)
        fsync_dir(self.msg)
        self.journal.done([msgid])

    def queued(self) -> list[str]:
        """Every message still in the queue, oldest first (IDs sort by time)."""
        files = [p.name for p in self.msg.iterdir() if not p.name.startswith(".")]
        return sorted({*files, *self.journal.pending()})

    def recover(self) -> list[str]:
        """At startup: drop partial files (never acknowledged), list what is queued."""
        for p in self.tmp.iterdir():
            log.info("queue: removing partial file %s left by a crash", p.name)
            p.unlink(missing_ok=True)
        return self.queued()

    def close(self) -> None:
        self.journal.close()


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
