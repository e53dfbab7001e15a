"""The remote runner: delivers queued messages to other mail servers, retries, and bounces.

A message with remote recipients arrives here (from the local runner, or from the queue at
startup) already in a file of its own. For each message, when it is due, the recipients still
pending are grouped by domain (or all together for a smart host) and handed to
delivery.outbound, with bounded concurrency in total and per domain. Each outcome is recorded in
the message's state file *before* anything else happens (queue/state.py); then:
- delivered: done;
- failed (5xx, null MX, NXDOMAIN, or expired): an RFC 3464 bounce goes to the sender (never for a
  bounce: null sender);
- deferred: retried on the schedule (queue/schedule.py), with one "delayed" DSN after
  ``delay_warning``.
When no recipient is pending any more, the message and its state leave the queue.

Administration (control/service.py calls these): ``hold``/``release`` (durable, in the state
file; a held message is parked and never attempted), ``flush_ids``, ``delete`` and
``bounce_now``. An attempt in flight is never interrupted: hold takes effect after it, and
delete/bounce wait for it to end (``wait_idle``) and park the message while they work.

Must not: speak SMTP itself or decide policy for incoming mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailferry.config import Config
from mailferry.delivery.outbound import DEFERRED, DELIVERED, FAILED, Outbound, Outcome
from mailferry.envelope import Envelope, Recipient
from mailferry.ids import MessageIdFactory
from mailferry.queue import bounce, schedule
from mailferry.queue.state import DELIVERED as ST_DELIVERED
from mailferry.queue.state import FAILED as ST_FAILED
from mailferry.queue.state import PENDING, MessageState, RecipientState, StateStore
from mailferry.queue.store import QueueStore
from mailferry.txlog import format as fmt
from mailferry.txlog.writer import TxLog

if TYPE_CHECKING:
    from mailferry.metrics import Metrics

log = logging.getLogger("mailferry.remote")


class RemoteRunner:
    def __init__(self, config: Config, store: QueueStore, states: StateStore, outbound: Outbound,
                 txlog: TxLog, ids: MessageIdFactory, is_local: Callable[[str], bool],
                 enqueue_local: Callable[[Envelope, bytes], None],
                 metrics: Metrics | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._store = store
        self._states = states
        self._outbound = outbound
        self._txlog = txlog
        self._ids = ids
        self._is_local = is_local
        self._enqueue_local = enqueue_local  # hands a committed message to the local runner
        q = config.queue
        self._policy = schedule.RetryPolicy(
            schedule=q.retry_schedule, then_every=q.retry_every, lifetime=q.lifetime,
            delay_warning=q.delay_warning or None)
        self._due: list[tuple[float, str]] = []  # heap of (when, msgid)
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._forced: set[str] = set()  # flushed: try every pending recipient, due or not
        # On hold, or being deleted/bounced: never started, even when due (the durable mark of
        # a hold is in the state file; this set is its in-memory side).
        self._parked: set[str] = set()
        self._attempt_done: dict[str, asyncio.Event] = {}  # waited on by wait_idle()
        # Recent delivery errors, newest last (``mailferry status``): bounded, in memory only.
        self.errors: deque[dict] = deque(maxlen=50)
        self._wakeup = asyncio.Event()
        self._total = asyncio.Semaphore(config.queue.delivery_workers)
        self._per_domain: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(config.delivery.per_domain))
        self._task: asyncio.Task[None] | None = None
        self._finishing: list[tuple[str, asyncio.Future[None]]] = []
        self._finish_running = False
        self._tasks: set[asyncio.Task[None]] = set()

    # --- feeding ----------------------------------------------------------------------------------
    def submit(self, msgid: str, when: float = 0.0) -> None:
        """Deliver ``msgid``'s remote recipients at ``when`` (0: now)."""
        if msgid in self._queued:
            return
        self._queued.add(msgid)
        heapq.heappush(self._due, (when, msgid))
        self._wakeup.set()

    def flush(self) -> None:
        """Retry everything now (like ``postqueue -f``)."""
        # Moving the heap entries alone is not enough: _deliver skips recipients whose
        # next_attempt is still ahead, so the flushed messages are marked as well.
        self._forced.update(m for _, m in self._due)
        self._due = [(0.0, m) for _, m in self._due]
        heapq.heapify(self._due)
        self._wakeup.set()

    def queued(self) -> list[tuple[str, str]]:
        """(message ID, "remote_active" or "remote_waiting") for each message here (metrics).
        The sets are copied first (one C-level step): a scrape may run on another thread."""
        active, waiting = tuple(self._active), tuple(self._queued)
        return [*((m, "remote_active") for m in active), *((m, "remote_waiting") for m in waiting)]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="remote-runner")

    async def stop(self) -> None:
        for task in (self._task, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._task, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._outbound.close()  # QUIT on connections kept for reuse

    # --- scheduling -------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            now = time.time()
            while self._due and self._due[0][0] <= now:
                _, msgid = heapq.heappop(self._due)
                self._queued.discard(msgid)
                if msgid in self._active or msgid in self._parked:
                    continue
                self._active.add(msgid)
                task = asyncio.get_running_loop().create_task(self._attempt(msgid))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._wakeup.clear()
            timeout = max(0.0, self._due[0][0] - time.time()) if self._due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _attempt(self, msgid: str) -> None:
        try:
            async with self._total:
                await self._deliver(msgid)
        except Exception:
            log.exception("remote delivery of %s failed; retrying in %ss", msgid,
                          self._policy.schedule[0] if self._policy.schedule else 300)
            self._active.discard(msgid)
            self.submit(msgid, time.time() + (self._policy.schedule[0]
                                              if self._policy.schedule else 300))
            return
        finally:
            done = self._attempt_done.pop(msgid, None)
            if done is not None:
                done.set()
        self._active.discard(msgid)

    # --- one message ------------------------------------------------------------------------------
    async def _deliver(self, msgid: str) -> None:
        try:
            # Reading a journal message is one pread from the page cache: not worth a thread
            # hop. A message in a file of its own may be large or cold: read it in a thread.
            if self._store.in_journal(msgid):
                envelope, message = self._store.read(msgid)
            else:
                envelope, message = await asyncio.to_thread(self._store.read, msgid)
        except FileNotFoundError:
            # Finished meanwhile (a second submission raced with the end of the first attempt):
            # nothing left to do, and retrying would only fail again forever.
            log.info("remote delivery of %s: no longer queued", msgid)
            return
        remote = [i for i, r in enumerate(envelope.recipients) if not r.local]
        state = self._states.load(msgid, remote)  # small, or absent (the common case)
        if state.held:
            # On hold (maybe since before a restart): parked until released, not rescheduled.
            self._parked.add(msgid)
            self._forced.discard(msgid)
            return
        if state.unbounced():
            # Failed before a crash that came before the bounce was queued: bounce them now.
            await self._bounce_failed(envelope, message, state, state.unbounced())
        now = time.time()
        forced = msgid in self._forced
        self._forced.discard(msgid)
        pending = [i for i in state.pending()
                   if forced or state.recipients[i].next_attempt <= now]
        by_domain: dict[str, list[int]] = defaultdict(list)
        smart = self._config.relay.host is not None and not self._config.relay.fallback
        for i in pending:
            domain = envelope.recipients[i].address.rpartition("@")[2]
            by_domain["" if smart else domain].append(i)
        # The common case — a first attempt, one destination, the message still in the
        # journal — needs no state file when everything is delivered: a durable DONE record in
        # the journal is then the outcome record (one batched fdatasync instead of creating,
        # syncing and deleting a file per message).
        fast = (len(by_domain) == 1 and not self._config.relay.fallback
                and all(r.attempts == 0 for r in state.recipients.values())
                and self._store.in_journal(msgid))
        results = await asyncio.gather(*(
            self._deliver_domain(domain, envelope, message, state, idxs, smart, fast=fast)
            for domain, idxs in by_domain.items()))
        failed = [i for idxs in results for i in idxs]
        if failed:
            await self._bounce_failed(envelope, message, state, failed)
        if state.pending():
            # It must wait: give it a file of its own so that journal segments can go.
            await asyncio.to_thread(self._store.keep, msgid)
            await self._maybe_warn(envelope, message, state)
            # Flushed while this attempt ran: again at once, else on the schedule.
            self.submit(msgid, 0.0 if msgid in self._forced else state.due())
        elif fast and not state.written:
            await self._finish_delivered(msgid)
        else:
            await asyncio.to_thread(self._finish, msgid)

    async def _finish_delivered(self, msgid: str) -> None:
        """Group commit for the DONE records of the fast path: one fdatasync for every message
        that finished while the previous one ran."""
        future = asyncio.get_running_loop().create_future()
        self._finishing.append((msgid, future))
        if not self._finish_running:
            self._finish_running = True
            asyncio.get_running_loop().create_task(self._finish_batches())
        await future

    async def _finish_batches(self) -> None:
        try:
            while self._finishing:
                batch, self._finishing = self._finishing, []
                try:
                    await asyncio.to_thread(self._store.finish_delivered, [m for m, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._finish_running = False

    async def _deliver_domain(self, domain: str, envelope: Envelope, message: bytes,
                              state: MessageState, idxs: list[int], smart: bool, *,
                              fast: bool = False) -> list[int]:
        """Deliver to ``idxs`` (one domain) and record each outcome as soon as it is known.
        Returns the indexes that failed for good (their bounce is the caller's)."""
        rcpts = [envelope.recipients[i].address for i in idxs]
        key = domain or "[smart host]"
        async with self._per_domain[key]:
            outcomes = await self._outbound.deliver(domain or "", envelope.msgid,
                                                    envelope.sender, message, rcpts,
                                                    smart_host=smart)
        if not smart and self._config.relay.host is not None and self._config.relay.fallback:
            # Smart host as fallback: recipients deferred by direct delivery go there now. The
            # direct outcomes that are final are written down first: a crash during the
            # fallback session must not forget a 250 from the direct one.
            retry = [k for k, o in enumerate(outcomes) if o.status == DEFERRED]
            settled = [k for k in range(len(idxs)) if k not in retry]
            failed = await self._record(envelope, state, [(idxs[k], outcomes[k])
                                                          for k in settled])
            if retry:
                again = await self._outbound.deliver(
                    domain, envelope.msgid, envelope.sender, message,
                    [rcpts[k] for k in retry], smart_host=True)
                failed += await self._record(envelope, state, [
                    (idxs[k], outcome) for k, outcome in zip(retry, again, strict=True)])
            return failed
        results = list(zip(idxs, outcomes, strict=True))
        if fast and all(o.status == DELIVERED for o in outcomes):
            now = time.time()
            for i, outcome in results:  # the caller's durable DONE records these outcomes
                r = state.recipients[i]
                r.attempts += 1
                r.last_attempt = now
                r.reply = outcome.reply
                r.remote = outcome.remote
                r.status = ST_DELIVERED
                if self._metrics is not None:
                    self._metrics.delivered("remote", envelope.received_at, now)
            return []
        return await self._record(envelope, state, results)

    async def _record(self, envelope: Envelope, state: MessageState,
                      results: list[tuple[int, Outcome]]) -> list[int]:
        """Write the outcomes down (durably when any is final) before anything acts on them.
        Returns the indexes of the recipients that now failed for good."""
        if not results:
            return []
        now = time.time()
        msgid = envelope.msgid
        failed: list[int] = []
        changed: list[tuple[int, RecipientState]] = []
        expired: list[str] = []
        for i, outcome in results:
            r = state.recipients[i]
            r.attempts += 1
            r.last_attempt = now
            r.reply = outcome.reply
            r.remote = outcome.remote
            r.enhanced = outcome.enhanced
            if not state.first_attempt:
                state.first_attempt = now
            address = envelope.recipients[i].address
            if outcome.status != DELIVERED:
                self.errors.append({"time": now, "msgid": msgid, "recipient": address,
                                    "status": outcome.status, "reply": outcome.reply,
                                    "remote": outcome.remote})
            if outcome.status == DELIVERED:
                r.status = ST_DELIVERED
                if self._metrics is not None:
                    self._metrics.delivered("remote", envelope.received_at, now)
            elif outcome.status == FAILED:
                r.status = ST_FAILED
                r.enhanced = _failure_code(outcome.enhanced, expired=False)
                if self._metrics is not None:
                    self._metrics.failed("remote")
            else:
                nxt = schedule.next_attempt(self._policy, r.attempts, envelope.received_at, now)
                if nxt is None or schedule.is_expired(self._policy, envelope.received_at, now):
                    r.status = ST_FAILED
                    r.enhanced = _failure_code(outcome.enhanced, expired=True)
                    if self._metrics is not None:
                        self._metrics.failed("remote")
                    expired.append(f"Expired {msgid} for <{address}>: still failing after "
                                   f"{_days(self._policy.lifetime)} in the queue; last reply:"
                                   f" {outcome.reply}")
                else:
                    r.next_attempt = nxt
                    if self._metrics is not None:
                        self._metrics.deferred("remote")
                    at = time.strftime("%H:%M:%S", time.localtime(nxt))
                    self._system(
                        f"Deferred {msgid} to <{address}>: {outcome.reply};"
                        f" attempt {r.attempts}; {fmt.next_retry(at)}")
            if r.status == ST_FAILED:
                failed.append(i)
            changed.append((i, r))
        # Final outcomes are fsynced before the bounce or the removal that follows them; in a
        # worker thread, because an fsync can take long enough to stall every session.
        durable = any(r.status != PENDING for _, r in changed)
        await asyncio.to_thread(self._states.record_many, msgid, changed, durable=durable)
        state.written = True
        for line in expired:
            self._system(line)
        return failed

    async def _maybe_warn(self, envelope: Envelope, message: bytes, state: MessageState) -> None:
        if state.warned or not schedule.delay_warning_due(
                self._policy, envelope.received_at, time.time(), state.warned):
            return
        delayed = state.pending()
        await self._bounce(envelope, message, state, delayed, "delay")
        state.warned = True
        await asyncio.to_thread(self._states.record_warned, envelope.msgid)

    async def _bounce_failed(self, envelope: Envelope, message: bytes, state: MessageState,
                             idxs: list[int]) -> str | None:
        dsn_id = await self._bounce(envelope, message, state, idxs, "failure")
        for i in idxs:
            state.recipients[i].bounced = True
        await asyncio.to_thread(self._states.record_bounced, envelope.msgid, idxs)
        return dsn_id

    async def _bounce(self, envelope: Envelope, message: bytes, state: MessageState,
                      idxs: list[int], kind: str) -> str | None:
        """Queue a DSN about ``idxs`` for the sender, from what their state records.
        Returns the DSN's message ID (None when none is owed: the null sender)."""
        if not bounce.should_bounce(envelope):
            self._system(f"No bounce for {envelope.msgid}: it has the null sender <>"
                         " (never bounce a bounce)")
            return None
        now = time.time()
        statuses = []
        for i in idxs:
            r = state.recipients[i]
            host, ip = _split_remote(r.remote)
            statuses.append(bounce.RecipientStatus(
                recipient=envelope.recipients[i].address,
                original=envelope.recipients[i].original,
                action="failed" if kind == "failure" else "delayed",
                status=_failure_code(r.enhanced, expired=r.enhanced.startswith("4"))
                if kind == "failure" else _delay_code(r.enhanced),
                diagnostic=r.reply or None,
                remote_mta=host,
                remote_ip=ip,
                last_attempt=r.last_attempt or now,
                will_retry_until=schedule.expires_at(self._policy, envelope.received_at)
                if kind == "delay" else None))
        dsn_id = self._ids.new()
        hostname = self._config.server.hostname
        data = bounce.build_dsn(
            reporting_mta=hostname, original_envelope=envelope, original_message=message,
            failures=statuses, kind="failure" if kind == "failure" else "delay", now=now,
            dsn_msgid=dsn_id, postmaster=f"postmaster@{hostname}")
        to = envelope.sender
        dsn_env = Envelope(msgid=dsn_id, sender="", received_at=now, client_ip="", helo="",
                           size=len(data), recipients=[Recipient(to, to, self._is_local(to))],
                           extra={"dsn_for": envelope.msgid, "dsn_kind": kind})
        spool = self._store.spool(dsn_id)
        spool.write(data)
        await self._store.commit(dsn_env, b"", spool)
        reason = f"to <{to}>: " + ", ".join(f"<{s.recipient}> {s.status}" for s in statuses)
        if kind == "failure":
            self._system(fmt.bounce_created(dsn_id, envelope.msgid, reason))
        else:
            self._system(f"Delay warning {dsn_id} for {envelope.msgid} {reason}")
        if self._metrics is not None:
            self._metrics.bounce(kind)
        self._enqueue_local(dsn_env, data)
        return dsn_id

    # --- administration (control/service.py) ----------------------------------------------------
    def tracks(self, msgid: str) -> bool:
        """Whether this runner has ``msgid`` (waiting, in an attempt, or parked). A queued
        message it does not track is still with the local runner (Maildir delivery)."""
        return msgid in self._queued or msgid in self._active or msgid in self._parked

    def is_active(self, msgid: str) -> bool:
        """Whether a delivery attempt of ``msgid`` is running now."""
        return msgid in self._active

    def next_due(self, msgid: str) -> float | None:
        """When ``msgid`` is scheduled (None when it is not waiting in the schedule)."""
        if msgid not in self._queued:
            return None
        return min((when for when, m in self._due if m == msgid), default=None)

    async def wait_idle(self, msgid: str, timeout: float) -> bool:
        """Wait until no attempt of ``msgid`` runs (at most ``timeout`` s). True when idle."""
        while msgid in self._active:
            done = self._attempt_done.setdefault(msgid, asyncio.Event())
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                return msgid not in self._active
        return True

    async def hold(self, msgid: str) -> None:
        """Put ``msgid`` on hold: parked, then durably marked. An attempt in flight finishes;
        what it leaves pending waits for release."""
        was_parked = self.park(msgid)  # first: no attempt may start while the mark is written
        try:
            await asyncio.to_thread(self._states.record_held, msgid, True)
        except BaseException:
            if not was_parked:
                self._parked.discard(msgid)
            raise
        self._forced.discard(msgid)
        if msgid not in self._active:
            # Out of the journal into a file of its own: a held message may stay for days, and
            # it must not keep a journal segment alive. (An attempt in flight does this itself
            # when it leaves recipients pending; doing it here too would race with it.)
            await asyncio.to_thread(self._store.keep, msgid)

    async def release(self, msgid: str) -> None:
        """Take ``msgid`` off hold and try its pending recipients now."""
        await asyncio.to_thread(self._states.record_held, msgid, False)
        self._parked.discard(msgid)
        if msgid not in self._queued and msgid not in self._active:
            self.submit(msgid, 0.0)
        self.flush_ids([msgid])

    def flush_ids(self, msgids: list[str]) -> int:
        """Try these messages now, pending recipients due or not; one in an attempt right
        after it. Held ones are skipped, and so are those this runner does not have yet (still
        with the local runner). Returns how many were scheduled."""
        wanted = {m for m in msgids if m not in self._parked
                  and (m in self._queued or m in self._active)}
        if not wanted:
            return 0
        self._forced.update(wanted)  # _deliver reschedules a forced message at once
        self._due = [(0.0 if m in wanted else when, m) for when, m in self._due]
        heapq.heapify(self._due)
        self._wakeup.set()
        return len(wanted)

    def park(self, msgid: str) -> bool:
        """Keep ``msgid`` from starting an attempt (while it is deleted or bounced). Returns
        whether it was parked already (on hold)."""
        was = msgid in self._parked
        self._parked.add(msgid)
        return was

    def unpark(self, msgid: str) -> None:
        """Undo :meth:`park` after a failed delete/bounce, and reschedule it."""
        self._parked.discard(msgid)
        self.submit(msgid, 0.0)

    async def delete(self, msgid: str) -> None:
        """Remove ``msgid`` and its state for good (the caller parked it and waited for any
        attempt in flight)."""
        await asyncio.to_thread(self._finish, msgid)
        self._forget(msgid)

    async def bounce_now(self, msgid: str, diagnostic: str) -> tuple[list[str], str | None]:
        """Fail every pending remote recipient of ``msgid`` with ``diagnostic``, send the sender
        one RFC 3464 failure notice, and remove the message. Returns the recipients and the
        notice's ID (None for the null sender). The caller parked ``msgid`` first."""
        envelope, message = await asyncio.to_thread(self._store.read, msgid)
        remote = [i for i, r in enumerate(envelope.recipients) if not r.local]
        state = self._states.load(msgid, remote)
        now = time.time()
        pending = state.pending()
        for i in pending:
            r = state.recipients[i]
            r.status = ST_FAILED
            # Our own reason, not a remote server's reply: no Remote-MTA in the notice (the
            # last reply, if any, is quoted as part of the reason).
            r.reply = diagnostic + (f" (the last attempt got: {r.reply})" if r.reply else "")
            r.remote = ""
            r.enhanced = "5.0.0"  # RFC 3463: "other undefined status", permanent
            r.last_attempt = r.last_attempt or now
        # Recorded first, as for any failure: a crash before the removal bounces them again
        # rather than delivering them after the administrator returned them.
        await asyncio.to_thread(self._states.record_many, msgid,
                                [(i, state.recipients[i]) for i in pending], durable=True)
        owed = sorted({*pending, *state.unbounced()})
        dsn_id = await self._bounce_failed(envelope, message, state, owed) if owed else None
        await asyncio.to_thread(self._finish, msgid)
        self._forget(msgid)
        return [envelope.recipients[i].address for i in pending], dsn_id

    def _forget(self, msgid: str) -> None:
        self._parked.discard(msgid)
        self._forced.discard(msgid)
        if msgid in self._queued:
            self._queued.discard(msgid)
            self._due = [(when, m) for when, m in self._due if m != msgid]
            heapq.heapify(self._due)

    def _system(self, text: str) -> None:
        # Addresses here may come from an alias target rather than a checked RCPT, and replies
        # from a remote server: a CR or LF in either must not forge a log line.
        self._txlog.system(fmt.sanitize(text))

    def _finish(self, msgid: str) -> None:
        self._store.remove([msgid])
        self._states.remove(msgid)


def _failure_code(enhanced: str, *, expired: bool) -> str:
    """The DSN status of a recipient given up on (RFC 3463)."""
    if enhanced.startswith("5"):
        return enhanced
    # RFC 3463 §3.5: 4.4.7 "delivery time expired", as Postfix reports an expired message; a
    # permanent failure without a usable code of its own is 5.0.0.
    return "4.4.7" if expired else "5.0.0"


def _delay_code(enhanced: str) -> str:
    # A delay is temporary by definition (RFC 3464 §2.3.3); anything else recorded is not
    # usable in a delay notice.
    return enhanced if enhanced.startswith("4") else "4.0.0"


_REMOTE_RE = re.compile(r"(?P<host>.*?) \[(?P<ip>[^\]]*)\]\Z")


def _split_remote(remote: str) -> tuple[str | None, str | None]:
    """``"mx.example.net [192.0.2.7]"`` → ``("mx.example.net", "192.0.2.7")``."""
    if not remote:
        return None, None
    m = _REMOTE_RE.match(remote)
    if m is None:
        return remote, None
    return m["host"] or None, m["ip"] or None


def _days(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"
