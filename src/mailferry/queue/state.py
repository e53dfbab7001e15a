"""Per-message delivery state for messages waiting on remote recipients.

One append-only file per message, ``<data_dir>/queue/state/<msgid>``, one JSON object a line:
``{"i": 0, "s": "delivered", "r": "250 2.0.0 Ok: queued as 4F2A1", "t": 1795907320.1, "a": 1}``.
Replaying the lines gives each recipient's status, attempt count, last reply and next attempt.
Three more kinds of line: ``{"warned": true}`` (the delay notice went out),
``{"bounced": [0, 2]}`` (the failure notice for these recipients is in the queue) and
``{"held": true}`` / ``{"held": false}`` (an administrator put the message on hold or released
it, see control/service.py: the last one counts, and it survives a restart).

"Record the outcome before acting on it": a final outcome (delivered or failed) is appended and
fsynced as soon as the remote server has answered, before anything else happens, so a crash can
never make us deliver again to a recipient whose server already said 250. Deferrals are written
without fsync: losing one only makes the next attempt come sooner. A failure is recorded before
its bounce exists, so a crash in between would lose the bounce; replay therefore reports failed
recipients without a ``bounced`` line, and the runner bounces them then (a duplicate notice after
an unlucky crash is better than none).

Blocking file I/O: called from worker threads. Knows nothing of SMTP.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailferry.durable import fsync_dir

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_FINAL = (DELIVERED, FAILED)


@dataclass
class RecipientState:
    status: str = PENDING
    attempts: int = 0
    reply: str = ""
    next_attempt: float = 0.0
    last_attempt: float = 0.0
    remote: str = ""  # the host that gave the last reply: "mx.example.net [192.0.2.7]"
    enhanced: str = ""  # RFC 3463 status for a DSN ("5.1.1"; "4.4.7" when it expired)
    bounced: bool = False  # failed, and the failure notice has been queued (or is not owed)


@dataclass
class MessageState:
    recipients: dict[int, RecipientState] = field(default_factory=dict)
    warned: bool = False  # the delay warning DSN was sent
    held: bool = False  # on hold by an administrator: never attempted until released
    first_attempt: float = 0.0
    written: bool = False  # this process appended to the state file (in memory only)

    def pending(self) -> list[int]:
        return [i for i, r in self.recipients.items() if r.status == PENDING]

    def unbounced(self) -> list[int]:
        """Failed recipients whose failure notice was never queued (a crash came between)."""
        return [i for i, r in self.recipients.items() if r.status == FAILED and not r.bounced]

    def due(self) -> float:
        """When the earliest pending recipient is due (0 = now); inf when none is pending."""
        times = [r.next_attempt for r in self.recipients.values() if r.status == PENDING]
        return min(times) if times else float("inf")


class StateStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # Recipients of different domains finish at the same time in different worker threads;
        # one append at a time keeps the torn-line repair in _append race-free.
        self._lock = threading.Lock()
        # Files whose name is known to be durable. A file created by a deferral (not fsynced)
        # gets its directory synced with its first final outcome, not only when a final outcome
        # happens to create it: otherwise a power loss could drop the name, and with it the
        # record of a 250.
        self._named: set[str] = set()

    def load(self, msgid: str, indexes: list[int]) -> MessageState:
        """The state of ``msgid``'s remote recipients (all pending when nothing was recorded)."""
        state = MessageState({i: RecipientState() for i in indexes})
        try:
            text = (self.folder / msgid).read_text(errors="replace")
        except FileNotFoundError:
            return state
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: the record before it stands
            if not isinstance(rec, dict):
                continue
            if "warned" in rec:
                state.warned = True
                continue
            if "held" in rec:
                state.held = rec["held"] is True
                continue
            if "bounced" in rec:
                for i in rec["bounced"] if isinstance(rec["bounced"], list) else ():
                    if isinstance(i, int) and i in state.recipients:
                        state.recipients[i].bounced = True
                continue
            r = state.recipients.get(rec.get("i"))
            if r is None:
                continue
            if r.status in _FINAL:
                # A final outcome is never undone: whatever follows it (there should be nothing)
                # must not make a delivered recipient pending again.
                continue
            r.status = rec.get("s", r.status)
            r.attempts = rec.get("a", r.attempts)
            r.reply = rec.get("r", r.reply)
            r.next_attempt = rec.get("n", r.next_attempt)
            r.last_attempt = rec.get("t", r.last_attempt)
            r.remote = rec.get("h", r.remote)
            r.enhanced = rec.get("e", r.enhanced)
            if not state.first_attempt:
                state.first_attempt = r.last_attempt
        return state

    def record(self, msgid: str, index: int, r: RecipientState, *, durable: bool) -> None:
        self.record_many(msgid, [(index, r)], durable=durable)

    def record_many(self, msgid: str, items: Iterable[tuple[int, RecipientState]], *,
                    durable: bool) -> None:
        """Several recipients' outcomes in one write (and at most one fsync)."""
        lines = "".join(
            json.dumps({"i": index, "s": r.status, "a": r.attempts, "r": r.reply,
                        "n": r.next_attempt, "t": r.last_attempt, "h": r.remote,
                        "e": r.enhanced}, separators=(",", ":")) + "\n"
            for index, r in items)
        if lines:
            self._append(msgid, lines, durable=durable)

    def record_warned(self, msgid: str) -> None:
        self._append(msgid, '{"warned":true}\n', durable=True)

    def record_held(self, msgid: str, held: bool) -> None:
        # Durable: a hold must survive a crash, or the message would go out after all.
        line = json.dumps({"held": held, "t": time.time()}, separators=(",", ":"))
        self._append(msgid, line + "\n", durable=True)

    def events(self, msgid: str) -> list[dict]:
        """Every record of ``msgid``'s file, in order (for ``queue show``); [] when none."""
        try:
            text = (self.folder / msgid).read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def record_bounced(self, msgid: str, indexes: Iterable[int]) -> None:
        # Not fsynced: if this line is lost, the only cost is a second copy of the notice.
        self._append(msgid, json.dumps({"bounced": sorted(indexes)}) + "\n", durable=False)

    def _append(self, msgid: str, line: str, *, durable: bool) -> None:
        path = self.folder / msgid
        data = line.encode()
        with self._lock:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A crash tore the last line. Appending straight after it would glue this
                    # record onto the torn one, and the replay would drop both.
                    data = b"\n" + data
                _write_all(fd, data)
                if durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            if durable and msgid not in self._named:
                fsync_dir(self.folder)  # the file's name must survive a crash, not only its data
                self._named.add(msgid)

    def prune(self, queued: set[str]) -> int:
        """At startup: delete state files of messages no longer queued (a crash between removing
        a message and removing its state). Returns how many."""
        stale = [p for p in self.folder.iterdir() if p.name not in queued]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def remove(self, msgid: str) -> None:
        (self.folder / msgid).unlink(missing_ok=True)
        with self._lock:
            self._named.discard(msgid)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
