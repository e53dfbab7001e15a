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

Must not: speak SMTP itself or decide policy for incoming mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from mailferry.config import Config
from mailferry.delivery.outbound import DEFERRED, DELIVERED, FAILED, Outbound, Outcome
from mailferry.envelope import Envelope, Recipient
from mailferry.ids import MessageIdFactory
from mailferry.queue import bounce, schedule
from mailferry.queue.state import (
    DELIVERED as ST_DELIVERED,
)
from mailferry.queue.state import (
    FAILED as ST_FAILED,
)
from mailferry.queue.state import (
    MessageState,
    StateStore,
)
from mailferry.queue.store import QueueStore
from mailferry.txlog import format as fmt
from mailferry.txlog.writer import TxLog

log = logging.getLogger("mailferry.remote")


class RemoteRunner:
    def __init__(self, config: Config, store: QueueStore, states: StateStore, outbound: Outbound,
                 txlog: TxLog, ids: MessageIdFactory, is_local: Callable[[str], bool],
                 enqueue_local: Callable[[Envelope, bytes], None]) -> None:
        self._config = config
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
        self._wakeup = asyncio.Event()
        self._total = asyncio.Semaphore(config.queue.delivery_workers)
        self._per_domain: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(config.delivery.per_domain))
        self._task: asyncio.Task[None] | None = None
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
        self._due = [(0.0, m) for _, m in self._due]
        heapq.heapify(self._due)
        self._wakeup.set()

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

    # --- scheduling -------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            now = time.time()
            while self._due and self._due[0][0] <= now:
                _, msgid = heapq.heappop(self._due)
                self._queued.discard(msgid)
                if msgid in self._active:
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
        self._active.discard(msgid)

    # --- one message ------------------------------------------------------------------------------
    async def _deliver(self, msgid: str) -> None:
        envelope, message = await asyncio.to_thread(self._store.read, msgid)
        remote = [i for i, r in enumerate(envelope.recipients) if not r.local]
        state = await asyncio.to_thread(self._states.load, msgid, remote)
        now = time.time()
        pending = [i for i in state.pending() if state.recipients[i].next_attempt <= now]
        by_domain: dict[str, list[int]] = defaultdict(list)
        smart = self._config.relay.host is not None and not self._config.relay.fallback
        for i in pending:
            domain = envelope.recipients[i].address.rpartition("@")[2]
            by_domain["" if smart else domain].append(i)
        results = await asyncio.gather(*(
            self._deliver_domain(domain, envelope, message, idxs, smart)
            for domain, idxs in by_domain.items()))
        failed: list[tuple[int, Outcome]] = []
        now = time.time()
        for idxs, outcomes in zip(by_domain.values(), results, strict=True):
            for i, outcome in zip(idxs, outcomes, strict=True):
                if self._record(msgid, envelope, state, i, outcome, now):
                    failed.append((i, outcome))
        if failed:
            await self._bounce(envelope, message, state, failed, "failure")
        if state.pending():
            await self._maybe_warn(envelope, message, state)
            self.submit(msgid, state.due())
        else:
            await asyncio.to_thread(self._finish, msgid)

    async def _deliver_domain(self, domain: str, envelope: Envelope, message: bytes,
                              idxs: list[int], smart: bool) -> list[Outcome]:
        rcpts = [envelope.recipients[i].address for i in idxs]
        key = domain or "[smart host]"
        async with self._per_domain[key]:
            outcomes = await self._outbound.deliver(domain or "", envelope.msgid,
                                                    envelope.sender, message, rcpts,
                                                    smart_host=smart)
        if not smart and self._config.relay.host is not None and self._config.relay.fallback:
            # Smart host as fallback: recipients deferred by direct delivery go there now.
            retry = [k for k, o in enumerate(outcomes) if o.status == DEFERRED]
            if retry:
                again = await self._outbound.deliver(
                    domain, envelope.msgid, envelope.sender, message,
                    [rcpts[k] for k in retry], smart_host=True)
                for k, outcome in zip(retry, again, strict=True):
                    outcomes[k] = outcome
        return outcomes

    def _record(self, msgid: str, envelope: Envelope, state: MessageState, i: int,
                outcome: Outcome, now: float) -> bool:
        """Write the outcome down (durably when final). True when the recipient now failed."""
        r = state.recipients[i]
        r.attempts += 1
        r.last_attempt = now
        r.reply = outcome.reply
        r.remote = outcome.remote
        if not state.first_attempt:
            state.first_attempt = now
        expired = False
        if outcome.status == DELIVERED:
            r.status = ST_DELIVERED
        elif outcome.status == FAILED:
            r.status = ST_FAILED
        else:
            nxt = schedule.next_attempt(self._policy, r.attempts, envelope.received_at, now)
            if nxt is None or schedule.is_expired(self._policy, envelope.received_at, now):
                r.status = ST_FAILED
                expired = True
                r.reply = (f"{outcome.reply} (gave up: still failing after "
                           f"{_days(self._policy.lifetime)} in the queue)")
            else:
                r.next_attempt = nxt
                at = time.strftime("%H:%M:%S", time.localtime(nxt))
                self._txlog.system(
                    f"Deferred {msgid} to <{envelope.recipients[i].address}>: {outcome.reply};"
                    f" attempt {r.attempts}; {fmt.next_retry(at)}")
        # Final outcomes are fsynced before the bounce or the removal that follows them.
        self._states.record(msgid, i, r, durable=r.status != "pending")
        if expired:
            self._txlog.system(f"Expired {msgid} for <{envelope.recipients[i].address}>")
        return r.status == ST_FAILED

    async def _maybe_warn(self, envelope: Envelope, message: bytes, state: MessageState) -> None:
        if state.warned or not schedule.delay_warning_due(
                self._policy, envelope.received_at, time.time(), state.warned):
            return
        delayed = [(i, Outcome(DEFERRED, state.recipients[i].reply, state.recipients[i].remote))
                   for i in state.pending()]
        await self._bounce(envelope, message, state, delayed, "delay")
        state.warned = True
        await asyncio.to_thread(self._states.record_warned, envelope.msgid)

    async def _bounce(self, envelope: Envelope, message: bytes, state: MessageState,
                      rcpts: list[tuple[int, Outcome]], kind: str) -> None:
        if not bounce.should_bounce(envelope):
            self._txlog.system(f"No bounce for {envelope.msgid}: it has the null sender <>"
                               " (never bounce a bounce)")
            return
        now = time.time()
        statuses = [bounce.RecipientStatus(
            recipient=envelope.recipients[i].address,
            original=envelope.recipients[i].original,
            action="failed" if kind == "failure" else "delayed",
            status=_status_code(o, kind),
            diagnostic=o.reply or None,
            remote_mta=o.remote.split(" [")[0] if o.remote else None,
            last_attempt=state.recipients[i].last_attempt or now,
            will_retry_until=envelope.received_at + self._policy.lifetime
            if kind == "delay" else None) for i, o in rcpts]
        dsn_id = self._ids.new()
        hostname = self._config.server.hostname
        data = bounce.build_dsn(
            reporting_mta=hostname, original_envelope=envelope, original_message=message,
            failures=statuses, kind=kind, now=now, dsn_msgid=dsn_id,
            postmaster=f"postmaster@{hostname}")
        to = envelope.sender
        dsn_env = Envelope(msgid=dsn_id, sender="", received_at=now, client_ip="", helo="",
                           size=len(data), recipients=[Recipient(to, to, self._is_local(to))],
                           extra={"dsn_for": envelope.msgid, "dsn_kind": kind})
        spool = self._store.spool(dsn_id)
        spool.write(data)
        await self._store.commit(dsn_env, b"", spool)
        reason = f"to <{to}>: " + ", ".join(f"<{s.recipient}> {s.status}" for s in statuses)
        if kind == "failure":
            self._txlog.system(fmt.bounce_created(dsn_id, envelope.msgid, reason))
        else:
            self._txlog.system(f"Delay warning {dsn_id} for {envelope.msgid} {reason}")
        self._enqueue_local(dsn_env, data)

    def _finish(self, msgid: str) -> None:
        self._store.remove([msgid])
        self._states.remove(msgid)


def _status_code(outcome: Outcome, kind: str) -> str:
    code = outcome.enhanced or ""
    if kind == "failure" and not code.startswith("5"):
        return "4.4.7" if outcome.status == DEFERRED else "5.0.0"  # 4.4.7: delivery time expired
    return code or ("4.0.0" if kind == "delay" else "5.0.0")


def _days(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"
