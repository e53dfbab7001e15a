"""The transaction log writer: buffered, line-atomic appends to ``<log dir>/smtp/sYYYYMMDD.log``.

Used by the inbound session (and later the outbound client) for every line of every session.
Lines are formatted by txlog.format with plain string operations and collected in a list; the list
goes to the file in one write on a short timer and at the end of each session, so a crash loses at
most ``flush_interval`` seconds of log and never a message. (Going through stdlib ``logging``
measured ~0.7 ms per message — more than the rest of the server's work.)

It never raises into the mail flow: a failed write is reported once on the operational log and
retried on the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mailferry.txlog import format as fmt

log = logging.getLogger("mailferry.txlog")


class TxLog:
    def __init__(self, directory: Path, *, flush_interval: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self._dir = directory / "smtp"
        self._flush_interval = flush_interval
        self._clock = clock
        self._buf: list[str] = []
        self._file = None
        self._day = ""
        self._second = -1
        self._stamp = "00:00:00"
        self._failed = False
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False

    # --- time -------------------------------------------------------------------------------
    def stamp(self) -> str:
        """``HH:MM:SS`` local time, recomputed once per second (this runs for every line)."""
        now = int(self._clock())
        if now != self._second:
            self._second = now
            tm = time.localtime(now)
            self._stamp = f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
            day = f"{tm.tm_year:04d}{tm.tm_mon:02d}{tm.tm_mday:02d}"
            if day != self._day:
                if self._day:
                    self.flush()  # the old day's lines go to the old day's file
                self._day = day
                self._close_file()
        return self._stamp

    # --- writing ----------------------------------------------------------------------------
    def session(self, peer: str, sid: str) -> SessionLog:
        return SessionLog(self, fmt.prefix(peer, sid))

    def system(self, body: str) -> None:
        self.append(fmt.prefix(fmt.SYSTEM_PEER, fmt.SYSTEM_SID), body)

    def append(self, prefix: str, body: str) -> None:
        self._buf.append(f"{prefix}{self.stamp()} {body}\n")
        if self._timer is None and self._flush_interval > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self._flush_interval, self._timed_flush)

    def flush_soon(self) -> None:
        """Flush at the end of this event-loop iteration: the sessions that end together share
        one write (each costs a syscall and, under load, a wait for the GIL)."""
        if self._soon:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._soon = True
        loop.call_soon(self._soon_flush)

    def _soon_flush(self) -> None:
        self._soon = False
        self.flush()

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        self.stamp()
        data = "".join(self._buf)
        try:
            if self._file is None:
                self._dir.mkdir(parents=True, exist_ok=True)
                path = self._dir / f"s{self._day}.log"
                self._file = open(path, "a", encoding="utf-8",  # noqa: SIM115 - kept open
                                  errors="backslashreplace", buffering=1 << 16)
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            if not self._failed:
                log.error("transaction log write failed (mail keeps flowing): %s", exc)
                self._failed = True
            self._close_file()
            if len(self._buf) > 100_000:  # do not grow without bound while the disk is broken
                del self._buf[:50_000]
            return
        if self._failed:
            log.warning("transaction log writes work again")
            self._failed = False
        self._buf.clear()

    def reopen(self) -> None:
        """After log rotation by an outside tool (SIGHUP)."""
        self.flush()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        self._close_file()


class SessionLog:
    """The lines of one session: every call adds one line with the session's peer and SID."""

    __slots__ = ("_log", "_prefix")

    def __init__(self, txlog: TxLog, prefix: str) -> None:
        self._log = txlog
        self._prefix = prefix

    def event(self, body: str) -> None:
        self._log.append(self._prefix, body)

    def received(self, text: str) -> None:
        self._log.append(self._prefix, fmt.RECEIVED + fmt.sanitize(text))

    def sent(self, lines: Iterable[str]) -> None:
        for text in lines:
            self._log.append(self._prefix, fmt.SENT + text)

    def text(self, text: str) -> None:
        self._log.append(self._prefix, fmt.sanitize(text))

    def end(self) -> None:
        self._log.append(self._prefix, fmt.DISCONNECTED)
        self._log.flush_soon()
