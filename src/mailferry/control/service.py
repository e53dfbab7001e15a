"""Queue control inside the running server: list, show, flush, hold, release, delete, bounce and
status, as JSON-ready dicts. The control socket (server.py) and the web API call these.

Where it sits: daemon.py builds one :class:`QueueControl` from the objects it already has (the
store, the state store, the remote runner, the transaction log, the open sessions). It reads
the queue and asks the remote runner to act; the runner owns scheduling, bounces and removal.

What an operation does to a message in the middle of a delivery attempt (an attempt is never
interrupted: the remote server may already have said 250):
- hold: marked at once (durably); the attempt in flight finishes and records its outcomes, and
  whatever it leaves pending is not attempted again until release;
- delete, bounce: wait up to ``busy_wait`` seconds for the attempt to end, then act on what is
  still pending (a recipient the attempt delivered is not bounced); refused if it does not end;
- flush, release: the message is tried again right after the attempt in flight.
A message whose local (Maildir) delivery has not finished yet — a matter of milliseconds — is
refused for hold, delete and bounce: "try again in a moment".

Every operation writes a ``SYSTEM [0000]`` line (txlog.format.queue_action / queue_bulk).
Must not: speak SMTP, know the socket protocol, or touch queue files itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from mailferry.config import Config
from mailferry.envelope import Envelope
from mailferry.queue.remote import RemoteRunner
from mailferry.queue.state import DELIVERED, FAILED, PENDING, MessageState, StateStore
from mailferry.queue.store import QueueStore
from mailferry.tracker import reader, render
from mailferry.tracker.reconstruct import Reconstructor
from mailferry.txlog import format as fmt
from mailferry.txlog.writer import TxLog

log = logging.getLogger("mailferry.control")

ACTIVE, DEFERRED, HELD = "active", "deferred", "held"
_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}\Z")  # a message ID is also a file name: nothing else
_HEADER_LIMIT = 65536  # bytes of a message read for its header block
_DOMAIN_RE = re.compile(r"[A-Za-z0-9.\-\[\]:_]{1,255}\Z")


class ControlError(Exception):
    """An unknown message ID or a refused action; ``str()`` is the message for the user."""


class QueueControl:
    def __init__(self, *, config: Config, store: QueueStore, states: StateStore,
                 remote: RemoteRunner, txlog: TxLog,
                 sessions: Callable[[], Iterable[Any]] = tuple,
                 started_at: float | None = None, busy_wait: float = 30.0) -> None:
        self._config = config
        self._store = store
        self._states = states
        self._remote = remote
        self._txlog = txlog
        self._sessions = sessions  # the open inbound sessions (inbound.session.Session)
        self._started_at = time.time() if started_at is None else started_at
        self._busy_wait = busy_wait

    # --- reading --------------------------------------------------------------------------------
    async def list(self) -> list[dict]:
        """Every queued message, oldest first (see :meth:`_view` for the fields)."""
        found = await asyncio.to_thread(self._read_all, self._store.queued())
        now = time.time()
        return [self._view(env, state, now) for env, _head, state in found]

    async def show(self, msgid: str) -> dict:
        """One message: the fields of :meth:`list`, its envelope, its header block, the
        per-recipient history from the state store and its story from the transaction log."""
        msgid = _check_id(msgid)
        env, head, state = await self._read_one(msgid)
        view = self._view(env, state, time.time())
        history = await asyncio.to_thread(self._history, env)
        self._txlog.flush()  # the story below is read from the log files
        record, story = await asyncio.to_thread(self._trace, msgid, env.received_at)
        view.update(
            envelope={"client_ip": env.client_ip, "helo": env.helo, "size": env.size,
                      "received_at": env.received_at, "extra": env.extra,
                      "recipients": [{"address": r.address, "original": r.original,
                                      "local": r.local} for r in env.recipients]},
            headers=_header_block(head),
            history=history,
            log_record=record,
            trace=story,
        )
        return view

    async def status(self) -> dict:
        """Uptime, open sessions (by listening address), queue size by state, oldest message
        age, and the most recent delivery errors (newest first)."""
        now = time.time()
        by_listener: Counter[str] = Counter()
        for session in list(self._sessions()):
            by_listener[_listener_of(session)] += 1
        messages = await self.list()
        by_state = Counter(m["state"] for m in messages)
        return {
            "pid": os.getpid(),
            "started_at": self._started_at,
            "uptime": round(now - self._started_at, 1),
            "sessions": {"open": sum(by_listener.values()), "by_listener": dict(by_listener)},
            "queue": {"total": len(messages), **{s: by_state.get(s, 0)
                                                 for s in (ACTIVE, DEFERRED, HELD)}},
            "oldest_age": round(max((m["age"] for m in messages), default=0.0), 1),
            "last_errors": list(reversed(self._remote.errors))[:10],
        }

    # --- acting ---------------------------------------------------------------------------------
    async def flush(self, msgid: str | None = None, domain: str | None = None, *,
                    actor: str = "admin") -> dict:
        """Retry now: one message, the messages with a pending recipient in ``domain``, or (with
        neither) every message not on hold. Returns ``{"flushed": n}``."""
        if msgid is not None and domain is not None:
            raise ControlError("give a message ID or a domain, not both")
        if msgid is not None:
            msgid = _check_id(msgid)
            _env, _head, state = await self._read_one(msgid)
            if state.held:
                raise ControlError(f"{msgid} is on hold: release it first")
            self._check_with_remote(msgid)
            n = self._remote.flush_ids([msgid])
            self._system(fmt.queue_action(msgid, "flushed", actor))
            return {"flushed": n}
        if domain is not None:
            if not isinstance(domain, str) or not _DOMAIN_RE.match(domain):
                raise ControlError(f"not a domain: {domain!r}")
            wanted = domain.lower()
            found = await asyncio.to_thread(self._read_all, self._store.queued())
            ids = [env.msgid for env, _head, state in found if not state.held and any(
                env.recipients[i].address.rpartition("@")[2].lower() == wanted
                for i in state.pending())]
            n = self._remote.flush_ids(ids)
            self._system(fmt.queue_bulk(n, "flushed", actor, f"domain {wanted}"))
            return {"flushed": n}
        found = await asyncio.to_thread(self._read_all, self._store.queued())
        n = self._remote.flush_ids([env.msgid for env, _h, state in found
                                    if not state.held and state.pending()])
        self._system(fmt.queue_bulk(n, "flushed", actor, "whole queue"))
        return {"flushed": n}

    async def hold(self, msgid: str, *, actor: str = "admin") -> dict:
        msgid = _check_id(msgid)
        _env, _head, state = await self._read_one(msgid)
        self._check_with_remote(msgid)
        if state.held:
            raise ControlError(f"{msgid} is already on hold")
        in_flight = self._remote.is_active(msgid)
        await self._remote.hold(msgid)
        detail = "after the delivery attempt in flight" if in_flight else ""
        self._system(fmt.queue_action(msgid, "held", actor, detail))
        return {"id": msgid, "state": HELD, "attempt_in_flight": in_flight}

    async def release(self, msgid: str, *, actor: str = "admin") -> dict:
        msgid = _check_id(msgid)
        _env, _head, state = await self._read_one(msgid)
        if not state.held:
            raise ControlError(f"{msgid} is not on hold")
        await self._remote.release(msgid)
        self._system(fmt.queue_action(msgid, "released", actor, "delivery is tried now"))
        return {"id": msgid, "state": ACTIVE}

    async def delete(self, msgid: str, *, actor: str = "admin") -> dict:
        msgid = _check_id(msgid)
        env, _head, _state = await self._read_one(msgid)
        async with self._quiet(msgid):
            await self._remote.delete(msgid)
        rcpts = ", ".join(f"<{r.address}>" for r in env.recipients if not r.local)
        self._system(fmt.queue_action(msgid, "deleted", actor,
                                      f"from <{env.sender}> to {rcpts}; no notice sent"))
        return {"id": msgid, "deleted": True}

    async def bounce(self, msgid: str, *, actor: str = "admin") -> dict:
        msgid = _check_id(msgid)
        await self._read_one(msgid)
        hostname = self._config.server.hostname
        diagnostic = (f"returned to the sender by the administrator of {hostname} before it "
                      "could be delivered")
        async with self._quiet(msgid):
            rcpts, dsn_id = await self._remote.bounce_now(msgid, diagnostic)
        listed = ", ".join(f"<{a}>" for a in rcpts) or "no pending recipient"
        notice = f"notice {dsn_id} to the sender" if dsn_id else "no notice (null sender)"
        self._system(fmt.queue_action(msgid, "bounced", actor, f"{listed}; {notice}"))
        return {"id": msgid, "bounced": rcpts, "dsn": dsn_id}

    # --- helpers --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _quiet(self, msgid: str):  # type: ignore[no-untyped-def]
        """Park ``msgid`` (no new attempt), wait for an attempt in flight, run the body; undo
        the parking if the body fails (unless it was on hold already)."""
        self._check_with_remote(msgid)
        was_parked = self._remote.park(msgid)
        try:
            if not await self._remote.wait_idle(msgid, self._busy_wait):
                raise ControlError(f"{msgid} is in a delivery attempt that has not ended after "
                                   f"{self._busy_wait:g} s; hold it, then try again")
            if msgid not in self._store.queued():
                raise ControlError(f"{msgid} left the queue meanwhile (its delivery finished)")
            yield
        except BaseException:
            if not was_parked and msgid in self._store.queued():
                self._remote.unpark(msgid)
            raise

    def _check_with_remote(self, msgid: str) -> None:
        if not self._remote.tracks(msgid):
            raise ControlError(f"{msgid} is being delivered to local mailboxes right now; "
                               "try again in a moment")

    async def _read_one(self, msgid: str) -> tuple[Envelope, bytes, MessageState]:
        found = await asyncio.to_thread(self._read_all, [msgid])
        if not found:
            raise ControlError(f"no message {msgid} in the queue")
        return found[0]

    def _read_all(self, msgids: list[str]) -> list[tuple[Envelope, bytes, MessageState]]:
        """Worker thread: envelope, header bytes and state of each message still queued."""
        out = []
        for msgid in msgids:
            try:
                env, head = self._store.read_start(msgid, _HEADER_LIMIT)
            except FileNotFoundError:
                continue  # delivered meanwhile
            except (OSError, ValueError) as exc:
                log.warning("queue control: cannot read %s: %s", msgid, exc)
                continue
            remote = [i for i, r in enumerate(env.recipients) if not r.local]
            out.append((env, head, self._states.load(msgid, remote)))
        return out

    def _view(self, env: Envelope, state: MessageState, now: float) -> dict:
        msgid = env.msgid
        tracked = self._remote.tracks(msgid)
        recipients = []
        for i, r in enumerate(env.recipients):
            if r.local:
                # The local runner delivers these first; the remote runner gets the message
                # only once they are done.
                recipients.append({"address": r.address, "original": r.original, "local": True,
                                   "state": DELIVERED if tracked else PENDING,
                                   "last_reply": None, "attempts": 0, "remote": None})
                continue
            rs = state.recipients[i]
            rstate = rs.status if rs.status != PENDING else (
                DEFERRED if rs.attempts else PENDING)
            recipients.append({"address": r.address, "original": r.original, "local": False,
                               "state": rstate, "last_reply": rs.reply or None,
                               "attempts": rs.attempts, "remote": rs.remote or None})
        failing = [state.recipients[i] for i in state.recipients
                   if state.recipients[i].status != DELIVERED and state.recipients[i].reply]
        last = max(failing, key=lambda x: x.last_attempt, default=None)
        due = self._remote.next_due(msgid)
        if due is None and state.due() != float("inf"):
            due = state.due()
        if state.held:
            mstate, next_attempt = HELD, None
        elif self._remote.is_active(msgid) or not tracked or (due is not None and due <= now):
            mstate, next_attempt = ACTIVE, None if self._remote.is_active(msgid) else due
        else:
            mstate, next_attempt = DEFERRED, due
        return {
            "id": msgid,
            "received_at": env.received_at,
            "age": round(max(0.0, now - env.received_at), 1),
            "size": env.size,
            "sender": env.sender,
            "state": mstate,
            "next_attempt": next_attempt,
            "last_error": last.reply if last is not None else None,
            "attempts": max((r.attempts for r in state.recipients.values()), default=0),
            "recipients": recipients,
        }

    def _history(self, env: Envelope) -> list[dict]:
        """Worker thread: the state file's records as events, in order."""
        events = []
        for rec in self._states.events(env.msgid):
            if "held" in rec:
                events.append({"time": rec.get("t"), "event": "held" if rec["held"] is True
                               else "released", "recipient": None})
            elif "warned" in rec:
                events.append({"time": None, "event": "delay notice sent", "recipient": None})
            elif "bounced" in rec:
                who = [env.recipients[i].address for i in rec["bounced"]
                       if isinstance(i, int) and 0 <= i < len(env.recipients)]
                events.append({"time": None, "event": "failure notice queued",
                               "recipient": ", ".join(who) or None})
            elif isinstance(rec.get("i"), int) and 0 <= rec["i"] < len(env.recipients):
                s = rec.get("s")
                events.append({
                    "time": rec.get("t"), "recipient": env.recipients[rec["i"]].address,
                    "event": s if s in (DELIVERED, FAILED) else DEFERRED,
                    "attempt": rec.get("a"), "reply": rec.get("r") or None,
                    "remote": rec.get("h") or None,
                    "next_attempt": rec.get("n") if s == PENDING else None})
        return events

    def _trace(self, msgid: str, received_at: float) -> tuple[dict | None, str | None]:
        """Worker thread: the tracker's record and ``trace --explain`` text for ``msgid``, read
        from the log files of the day it arrived onwards."""
        folder = self._config.log_dir / "smtp"
        if not folder.is_dir():
            return None, None
        first = date.fromtimestamp(received_at).toordinal()
        try:
            files = [f for f in reader.discover([str(folder)])
                     if f.day is None or f.day >= first]
        except FileNotFoundError:
            return None, None
        found: list[dict] = []
        rec = Reconstructor(found.append, explain=[msgid])
        for source, lines in reader.sources(files, on_error=lambda _why: None):
            rec.feed(lines, source)
        rec.finish()
        mine = [r for r in found if r.get("msgid") == msgid]
        if not mine:
            return None, None
        return mine[-1], render.explain(mine[-1])

    def _system(self, text: str) -> None:
        self._txlog.system(fmt.sanitize(text))
        self._txlog.flush()  # an administrator's action is in the log when the command returns


def _check_id(msgid: object) -> str:
    if not isinstance(msgid, str) or not _ID_RE.match(msgid):
        raise ControlError(f"not a message ID: {str(msgid)[:80]!r}")
    return msgid.upper()


def _header_block(head: bytes) -> str:
    end = head.find(b"\r\n\r\n")
    block = head if end < 0 else head[:end]
    return block.decode("utf-8", errors="replace").replace("\r\n", "\n")


def _listener_of(session: Any) -> str:
    transport = getattr(session, "transport", None)
    sock = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sock, tuple) and len(sock) >= 2:
        host = str(sock[0])
        return f"[{host}]:{sock[1]}" if ":" in host else f"{host}:{sock[1]}"
    return "unknown"


__all__ = ["ACTIVE", "DEFERRED", "HELD", "ControlError", "QueueControl"]
