"""The delivery runner: takes committed messages off the queue and delivers them.

Local recipients go to Maildir in batches: one worker-thread job writes every message of the
batch into its mailboxes' tmp/, syncs them, renames them into new/ and syncs each new/ folder
once — group commit again, so Maildir durability does not cost one fsync round-trip per message.
Only then is the queue file removed (or, when remote recipients remain, their state recorded).

Remote recipients stay queued for the outbound side (issue 3).
Must not: speak SMTP or decide policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailferry.delivery import maildir
from mailferry.durable import sync_files, sync_folders
from mailferry.envelope import Envelope
from mailferry.queue.store import QueueStore
from mailferry.txlog.writer import TxLog

if TYPE_CHECKING:
    from mailferry.metrics import Metrics

log = logging.getLogger("mailferry.runner")

_BATCH = 64  # messages per worker-thread job
_KEEP_IN_MEMORY = 2000  # above this backlog, re-read message bodies from disk instead
_RETRY_AFTER = 60.0  # seconds before a failed local delivery is tried again


@dataclass
class _Job:
    envelope: Envelope
    message: bytes | None  # header + body, when the session still had it in memory
    recovering: bool = False  # after a restart: skip mailboxes that already have it
    results: list[tuple[str, str]] = field(default_factory=list)  # (recipient, outcome)


class Runner:
    def __init__(self, store: QueueStore, mail_root: Path, hostname: str, txlog: TxLog,
                 metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._mail_root = mail_root
        self._hostname = hostname
        self._txlog = txlog
        self._jobs: deque[_Job] = deque()
        self._batch: list[_Job] = []  # being delivered by the worker thread
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._boxes: dict[str, maildir.Mailbox] = {}  # used by the worker thread only
        # Called on the event loop with the ID of each message that still has remote
        # recipients once its local ones are done (the remote runner's submit).
        self.on_remote: Callable[[str], None] | None = None

    # --- feeding ----------------------------------------------------------------------------
    def submit(self, envelope: Envelope, message: bytes | None) -> None:
        if self.on_remote is not None and not any(r.local for r in envelope.recipients):
            self.on_remote(envelope.msgid)  # nothing to do here: straight to the remote side
            return
        if len(self._jobs) > _KEEP_IN_MEMORY:
            message = None
        self._jobs.append(_Job(envelope, message))
        self._idle.clear()
        self._wakeup.set()

    def queued(self) -> list[str]:
        """IDs of the messages waiting for (or in) local delivery, for metrics. The unpacking
        copies the deque in one C-level step: a scrape may run on another thread."""
        return [job.envelope.msgid for job in (*self._batch, *self._jobs)]

    def recover(self) -> int:
        """Queue again everything found on disk at startup (after a crash or a stop)."""
        count = 0
        for msgid in self._store.recover():
            try:
                envelope, _ = self._store.read(msgid)
            except (OSError, ValueError) as exc:
                log.error("queue: cannot read %s: %s (left in place)", msgid, exc)
                continue
            self._jobs.append(_Job(envelope, None, recovering=True))
            count += 1
        if count:
            self._idle.clear()
            self._wakeup.set()
        return count

    # --- running ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._jobs.popleft() for _ in range(min(_BATCH, len(self._jobs)))]
            self._batch = batch
            try:
                await loop.run_in_executor(None, self._deliver_batch, batch)
            except Exception:  # never let one bad batch stop delivery
                log.exception("local delivery batch failed; retrying in %ss", _RETRY_AFTER)
                if self._metrics is not None:
                    self._metrics.deferred("local", sum(
                        r.local for job in batch for r in job.envelope.recipients))
                loop.call_later(_RETRY_AFTER, self._requeue, batch)
                continue
            finally:
                self._batch = []
            if self._metrics is not None:
                self._count_delivered(batch)
            for job in batch:
                for rcpt, outcome in job.results:
                    self._txlog.system(f"Delivery {job.envelope.msgid} to <{rcpt}>: {outcome}")
                if self.on_remote is not None and not all(
                        r.local for r in job.envelope.recipients):
                    self.on_remote(job.envelope.msgid)

    def _count_delivered(self, batch: list[_Job]) -> None:
        assert self._metrics is not None
        now = time.time()
        for job in batch:
            for _ in job.results:
                self._metrics.delivered("local", job.envelope.received_at, now)

    def _requeue(self, batch: list[_Job]) -> None:
        for job in batch:
            job.message = None
            job.recovering = True
            job.results.clear()
            self._jobs.append(job)
        self._idle.clear()
        self._wakeup.set()

    # --- the worker-thread part ---------------------------------------------------------------
    def _deliver_batch(self, batch: list[_Job]) -> None:
        written: list[tuple[int, Path, maildir.Mailbox, str]] = []
        try:
            for job in batch:
                self._write_job(job, written)
            sync_files(fd for fd, _tmp, _box, _name in written)
        finally:
            for fd, _tmp, _box, _name in written:
                os.close(fd)
        folders = set()
        for _fd, tmp, box, name in written:
            maildir.publish(box, name, tmp)
            folders.add(box.root / "new")
        sync_folders(folders)
        finished = []
        for job in batch:
            if all(r.local for r in job.envelope.recipients):
                finished.append(job.envelope.msgid)
            # else: the remote runner takes it from here (on_remote, on the event loop)
        self._store.remove(finished)

    def _mailbox(self, address: str) -> maildir.Mailbox:
        """The recipient's Maildir, created on first use (cached: mkdir costs a journal handle)."""
        box = self._boxes.get(address)
        if box is None:
            box = maildir.Mailbox.for_address(self._mail_root, address)
            box.ensure()
            if len(self._boxes) > 10_000:
                self._boxes.clear()
            self._boxes[address] = box
        return box

    def _write_job(self, job: _Job, written: list[tuple[int, Path, maildir.Mailbox, str]]) -> None:
        env = job.envelope
        message = job.message
        if message is None:
            _, message = self._store.read(env.msgid)
        for index, rcpt in enumerate(env.recipients):
            if not rcpt.local:
                continue
            box = self._mailbox(rcpt.address)
            name = maildir.file_name(env.received_at, env.msgid, index, self._hostname)
            if job.recovering and maildir.already_delivered(box, name):
                job.results.append((rcpt.address, "already in Maildir (delivered before restart)"))
                continue
            # Return-Path and Delivered-To are added at final delivery (RFC 5321 §4.4).
            head = f"Return-Path: <{env.sender}>\r\nDelivered-To: {rcpt.address}\r\n".encode()
            fd, tmp = maildir.write_tmp(box, name, [head, message])
            written.append((fd, tmp, box, name))
            job.results.append((rcpt.address, f"OK (Maildir {box.root / 'new' / name})"))
