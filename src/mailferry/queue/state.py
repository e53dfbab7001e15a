"""Per-message delivery state for messages waiting on remote recipients.

One append-only file per message, ``<data_dir>/queue/state/<msgid>``, one JSON object a line:
``{"i": 0, "s": "delivered", "r": "250 2.0.0 Ok: queued as 4F2A1", "t": 1795907320.1, "a": 1}``.
Replaying the lines gives each recipient's status, attempt count, last reply and next attempt.

"Record the outcome before acting on it": a final outcome (delivered or failed) is appended and
fsynced as soon as the remote server has answered, before anything else happens, so a crash can
never make us deliver again to a recipient whose server already said 250. Deferrals are written
without fsync: losing one only makes the next attempt come sooner.

Blocking file I/O: called from worker threads. Knows nothing of SMTP.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mailferry.durable import fsync_dir

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass
class RecipientState:
    status: str = PENDING
    attempts: int = 0
    reply: str = ""
    next_attempt: float = 0.0
    last_attempt: float = 0.0
    remote: str = ""  # the host that gave the last reply


@dataclass
class MessageState:
    recipients: dict[int, RecipientState] = field(default_factory=dict)
    warned: bool = False  # the delay warning DSN was sent
    first_attempt: float = 0.0

    def pending(self) -> list[int]:
        return [i for i, r in self.recipients.items() if r.status == PENDING]

    def due(self) -> float:
        """When the earliest pending recipient is due (0 = now); inf when none is pending."""
        times = [r.next_attempt for r in self.recipients.values() if r.status == PENDING]
        return min(times) if times else float("inf")


class StateStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def load(self, msgid: str, indexes: list[int]) -> MessageState:
        """The state of ``msgid``'s remote recipients (all pending when nothing was recorded)."""
        state = MessageState({i: RecipientState() for i in indexes})
        try:
            text = (self.folder / msgid).read_text()
        except FileNotFoundError:
            return state
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: the record before it stands
            if "warned" in rec:
                state.warned = True
                continue
            r = state.recipients.get(rec.get("i"))
            if r is None:
                continue
            r.status = rec.get("s", r.status)
            r.attempts = rec.get("a", r.attempts)
            r.reply = rec.get("r", r.reply)
            r.next_attempt = rec.get("n", r.next_attempt)
            r.last_attempt = rec.get("t", r.last_attempt)
            r.remote = rec.get("h", r.remote)
            if not state.first_attempt:
                state.first_attempt = r.last_attempt
        return state

    def record(self, msgid: str, index: int, r: RecipientState, *, durable: bool) -> None:
        line = json.dumps({"i": index, "s": r.status, "a": r.attempts, "r": r.reply,
                           "n": r.next_attempt, "t": r.last_attempt, "h": r.remote},
                          separators=(",", ":")) + "\n"
        self._append(msgid, line, durable=durable)

    def record_warned(self, msgid: str) -> None:
        self._append(msgid, '{"warned":true}\n', durable=True)

    def _append(self, msgid: str, line: str, *, durable: bool) -> None:
        path = self.folder / msgid
        created = False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if durable and created:
            fsync_dir(self.folder)  # the file's name must survive a crash as well as its data

    def remove(self, msgid: str) -> None:
        (self.folder / msgid).unlink(missing_ok=True)
