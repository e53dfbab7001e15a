"""The web UI's view of the transaction log: records and sessions, kept up to date cheaply.

Where it sits: between the tracker (which turns log lines into records) and the API. One
:class:`LogIndex` per server reads the last ``history_days`` days of ``<log dir>/smtp`` once,
then on each request only the bytes appended since (the log grows; re-reading whole files per
request would cost seconds on a busy day). It feeds one long-lived tracker Reconstructor in
``updates`` mode, so a message's record is replaced each time its story moves on, and keeps:

- the latest record of each message (and each record without a message ID: refusals, probes);
- every session seen in those records, keyed by ``(file, line)`` where it begins, with the
  message IDs it carried and whether anything in it went wrong (the red/green of the list);
- a few byte offsets per file, so that one session's lines can be read back from the file on
  demand (they are not held in memory).

Memory is bounded by count (oldest first out). It must not: write anything, or import the
server (the daemon hands in a liveness check).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from mailferry.tracker import reader, records, render
from mailferry.tracker.reconstruct import Reconstructor, Source
from mailferry.tracker.session import OUT
from mailferry.txlog import format as fmt

_CHUNK = 1 << 20  # bytes read per step: also the spacing of the seek points of a file
_MAX_SESSION_SCAN = 500_000  # lines read past a session's start while collecting its lines
_MAX_SESSION_LINES = 5_000

_BAD_MESSAGE = frozenset({"rejected", "aborted", "incomplete", "failed", "deferred"})
_BAD_DELIVERY = frozenset({"failed", "deferred", "partial", "no-attempt"})

SessionKey = tuple[str, int]  # (file name, line where the session begins)


@dataclass
class _File:
    path: str
    day: int | None
    offset: int = 0  # bytes read (always at a line boundary)
    lines: int = 0  # lines read
    seeks: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])  # (line, byte)


@dataclass
class SessionEntry:
    """One session as the lists show it."""

    session: dict  # records.session_dict
    msgids: list[str] = field(default_factory=list)
    bad: bool = False  # something in it was refused, aborted, deferred or failed
    record_status: str | None = None  # for sessions without mail: the session record's status


class LogIndex:
    def __init__(self, log_dir: Path, *, days: int = 2, max_records: int = 50_000,
                 max_sessions: int = 50_000, today: Callable[[], date] = date.today) -> None:
        self.log_dir = Path(log_dir)
        self.days = days
        self.max_records = max_records
        self.max_sessions = max_sessions
        self._today = today
        self.lock = threading.Lock()  # refresh and queries run in worker threads
        self._files: dict[str, _File] = {}
        self._rec = Reconstructor(self._emit, updates=True)
        self._anon = 0
        self.records: OrderedDict[str, dict] = OrderedDict()
        self.sessions: OrderedDict[SessionKey, SessionEntry] = OrderedDict()

    # -- reading ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read what was appended to the log since the last call. Caller holds ``lock``."""
        first_day = self._today().toordinal() - (self.days - 1)
        try:
            found = reader.discover([str(self.log_dir)]) if self.log_dir.is_dir() else []
        except FileNotFoundError:
            found = []
        for lf in found:
            if lf.day is None or lf.day < first_day or not reader.is_plain(lf):
                continue
            state = self._files.get(lf.name)
            if state is None:
                state = self._files[lf.name] = _File(lf.path, lf.day)
            self._read(lf.name, state)

    def _read(self, name: str, f: _File) -> None:
        try:
            size = os.path.getsize(f.path)
        except OSError:
            return
        if size < f.offset:  # truncated or replaced under us: read it again from the start
            f.offset, f.lines, f.seeks = 0, 0, [(0, 0)]
        while f.offset < size:
            try:
                with open(f.path, "rb") as fh:
                    fh.seek(f.offset)
                    data = fh.read(_CHUNK)
            except OSError:
                return
            end = data.rfind(b"\n") + 1
            if end == 0:
                if len(data) < _CHUNK:
                    return  # a partial last line: it waits for its newline
                end = len(data)  # a line longer than a chunk: take it in pieces
            lines = data[:end].decode("utf-8", errors="replace").splitlines(keepends=True)
            self._rec.feed(lines, Source(name, f.day, lines_before=f.lines))
            f.offset += end
            f.lines += len(lines)
            f.seeks.append((f.lines, f.offset))

    # -- what the reconstructor tells us ---------------------------------------------------------
    def _emit(self, rec: dict) -> None:
        key = rec["msgid"]
        if key is None:
            self._anon += 1
            key = f"#{self._anon}"
        self.records.pop(key, None)
        self.records[key] = rec
        if len(self.records) > self.max_records:
            self.records.popitem(last=False)
        for sess, bad in _sessions_of(rec):
            self._note_session(sess, rec, bad)

    def _note_session(self, sess: dict, rec: dict, bad: bool) -> None:
        k = (sess["file"], sess["line"])
        entry = self.sessions.get(k)
        if entry is None:
            entry = self.sessions[k] = SessionEntry(sess)
            if len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        entry.session = sess
        if rec["type"] == "session":
            entry.record_status = rec["status"]
        msgid = rec["msgid"]
        if msgid and msgid not in entry.msgids:
            entry.msgids.append(msgid)
        entry.bad = entry.bad or bad or not sess["complete"] or bool(sess["rejected"])

    # -- queries (caller holds ``lock``, after refresh) -------------------------------------------
    def open_sessions(self) -> list[tuple[dict, list[str], int]]:
        """Sessions whose Disconnected is not in the log yet: each with the message IDs and the
        number of its transactions so far."""
        found = []
        for s, txns in self._rec.open_sessions():
            ids = list(dict.fromkeys(t.msgid for t in txns if t.msgid))
            found.append((records.session_dict(s), ids, len(txns)))
        return found

    def message(self, msgid: str) -> dict | None:
        rec = self.records.get(msgid.upper()) or self.records.get(msgid)
        if rec is not None:
            return rec
        want = msgid.upper()
        for r in reversed(self.records.values()):  # a bounce told inside its original's record
            if r["bounce"] and (r["bounce"]["msgid"] or "").upper() == want:
                return r
        return None

    def bounce_of(self, msgid: str) -> str | None:
        return self._rec.bounce_of(msgid)

    def session(self, file: str, line: int) -> SessionEntry | None:
        entry = self.sessions.get((file, line))
        if entry is not None:
            return entry
        for sess, ids, _ in self.open_sessions():
            if (sess["file"], sess["line"]) == (file, line):
                return SessionEntry(sess, ids, False, "open")
        return None

    def session_lines(self, sess: dict) -> list[tuple[int, str, str]]:
        """The session's lines read back from its file: (line number, text, note)."""
        f = self._files.get(sess["file"])
        if f is None:
            return []
        direction = sess["direction"]
        out = []
        for lineno, raw in _session_lines(f, sess["line"], sess["peer"], sess["sid"]):
            out.append((lineno, raw, render.annotate(raw, direction)))
        return out

    @property
    def stats(self) -> dict:
        return self._rec.stats.as_dict()


def _sessions_of(rec: dict) -> Iterator[tuple[dict, bool]]:
    """The sessions a record tells of, each with whether it went wrong for this record."""
    if rec["session"]:
        yield rec["session"], rec["status"] in ("rejected", "aborted", "incomplete") or any(
            x["status"] in ("refused", "rejected", "tempfailed") for x in rec["recipients"])
    for d in rec["deliveries"]:
        yield d["session"], d["status"] in _BAD_DELIVERY
    if rec["bounce"]:
        yield from _sessions_of(rec["bounce"])


def _session_lines(f: _File, start: int, peer: str, sid: str) -> Iterator[tuple[int, str]]:
    """Lines of one session, from its first line to its Disconnected (bounded scan)."""
    i = bisect.bisect_right(f.seeks, (start, 1 << 62)) - 1
    lineno, offset = f.seeks[max(i, 0)]
    collected = 0
    connected = False
    try:
        fh = open(f.path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return
    with fh:
        fh.seek(offset)
        for data in fh:
            lineno += 1
            if lineno < start:
                continue
            if lineno - start > _MAX_SESSION_SCAN or collected >= _MAX_SESSION_LINES:
                return
            raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
            parts = fmt.split_line(raw)
            if parts is None or parts[0] != peer or parts[1] != sid:
                continue
            body = parts[3]
            if body == fmt.CONNECTED or body.startswith("Connected,"):
                if connected:
                    return  # the SID was reused by a new session: ours ended unseen
                connected = True  # (a delivery session logs DNS and "Connecting" before it)
            collected += 1
            yield lineno, raw
            if body == fmt.DISCONNECTED:
                return


def direction_letter(sess: dict) -> str:
    """IceWarp's Session History letters: S we served, C we connected."""
    return "C" if sess["direction"] == OUT else "S"


def message_is_bad(rec: dict) -> bool:
    return rec["status"] in _BAD_MESSAGE
