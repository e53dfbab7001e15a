"""One SMTP session we serve: drives smtp.server over a socket, asks policy, writes the
transaction log, and hands accepted mail to the queue.

An ``asyncio.Protocol`` rather than streams: it costs a fraction of the CPU per message (see
docs/design.md). Input is parsed as it arrives; every reply produced from one read (a pipelined
batch, RFC 2920) goes out in one ``write``. When a step must wait (DNS for the sender check, the
queue's fsync before 250) the session pauses reading and resumes where it stopped, so pipelined
commands are still answered in order.

Exceptions never reach the peer: the client gets ``451 4.3.0``, the log gets the detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from mailferry import metrics, reply
from mailferry.envelope import Envelope, Recipient
from mailferry.reply import Reply
from mailferry.smtp.server import (
    Answered,
    DataRequest,
    MailRequest,
    MessageEnd,
    RcptRequest,
    ServerProtocol,
)
from mailferry.txlog import format as fmt

if TYPE_CHECKING:
    from mailferry.inbound.listener import ServerContext
    from mailferry.queue.store import Spool
    from mailferry.txlog.writer import SessionLog

log = logging.getLogger("mailferry.session")


class Session(asyncio.Protocol):
    def __init__(self, ctx: ServerContext, listener: str = "smtp") -> None:
        self.ctx = ctx
        self.listener = listener  # the listener kind, for metrics
        self._metrics = ctx.metrics
        self._ended_by: str | None = None  # a metrics outcome: timeout, shutdown, error
        self._messages = 0  # accepted in this session
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.sid = ""
        self.tx: SessionLog | None = None
        self.proto: ServerProtocol | None = None
        self._out: list[bytes] = []
        self._busy = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._rdns: asyncio.Task | None = None
        self._rdns_name: str | None = None
        self._trusted = False
        self._accepted: list[tuple[str, tuple[str, ...], bool]] = []  # (rcpt, targets, forward)
        self._spool: Spool | None = None
        self._msgid = ""
        self._data_started = 0.0
        self._registered = False

    # --- connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's is not a subclass
        ctx = self.ctx
        peer = transport.get_extra_info("peername") or ("?", 0)
        local = transport.get_extra_info("sockname") or ("?", 0)
        self.peer_ip = str(peer[0])
        self.sid = ctx.sids.acquire()
        self.tx = ctx.txlog.session(self.peer_ip, self.sid)
        self.tx.event(fmt.connected(str(local[0])))
        refusal = ctx.admit(self)
        if refusal is not None:
            self._send(refusal)
            self._close()
            return
        self._registered = True
        self._trusted = ctx.policy.client_trusted(self.peer_ip)
        self.proto = ServerProtocol(ctx.config.server.hostname, self.peer_ip, ctx.limits)
        if ctx.config.policy.client_rdns != "off":
            self._rdns = asyncio.get_running_loop().create_task(self._check_client())
        self._send(reply.greeting(ctx.config.server.hostname, ctx.date()))
        self._arm_timer(ctx.config.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._rdns is not None:
            self._rdns.cancel()
        if self._spool is not None:
            # Mid-DATA disconnect: nothing is queued, the partial spool is thrown away.
            self._spool.discard()
            self._spool = None
            self._ended_by = self._ended_by or metrics.ERROR
            if self.tx is not None:
                self.tx.text("Connection lost during DATA; message discarded")
        if self.tx is not None:
            self.tx.end()
        if self._registered:
            self.ctx.release(self)
        self.ctx.sids.release(self.sid)
        if self._metrics is not None:
            self._metrics.session_ended(self.listener, self._outcome(exc))

    def _outcome(self, exc: Exception | None) -> str:
        """How the session ended, for mailferry_sessions_total (docs/metrics.md)."""
        if not self._registered:
            return metrics.REFUSED
        if self._messages:
            return metrics.ACCEPTED_MAIL
        if self._ended_by is not None:
            return self._ended_by
        return metrics.ERROR if exc is not None else metrics.NO_MAIL

    def _arm_timer(self, seconds: float) -> None:
        """Move the session's deadline. One timer per session is re-armed lazily when it fires
        early, rather than cancelled and re-created for every command (a hot path)."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + seconds
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._timed_out)

    def _timed_out(self) -> None:
        # RFC 5321 §4.5.3.2: the server closes an idle session; a client that trickles bytes
        # does not move the deadline, only complete commands do.
        self._timer = None
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._timed_out)
            return
        if self._busy:  # waiting for DNS or the disk, not for the client: check again soon
            self._timer = loop.call_later(1.0, self._timed_out)
            return
        assert self.tx is not None
        self.tx.text("Idle timeout")
        self._ended_by = metrics.TIMEOUT
        self._send(reply.IDLE_TIMEOUT)
        self._close()

    def shutdown(self) -> None:
        """Server stopping: tell the client and close (not in the middle of a commit)."""
        if not self._closing and not self._busy:
            self._ended_by = metrics.SHUTDOWN
            self._send(reply.SHUTTING_DOWN)
            self._close()

    # --- input ------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closing or self.proto is None:
            return
        self.proto.feed(data)
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        return False  # close our side too

    def _process(self) -> None:
        proto = self.proto
        assert proto is not None and self.tx is not None
        while not self._busy and not self._closing:
            try:
                event = proto.next_event()
                if event is None:
                    break
                self._handle(event)
            except Exception:
                self._internal_error()
        self._flush()

    def _handle(self, event: object) -> None:
        tx = self.tx
        assert tx is not None and self.proto is not None
        if type(event) is Answered:
            if event.line is not None:
                tx.received(event.line)
            elif event.reply is reply.LINE_TOO_LONG:
                tx.text("Command line too long; discarded")
            self._queue_reply(event.reply)
            if event.close:
                self._close()
            else:
                self._arm_timer(self.ctx.config.limits.idle_timeout)
            return
        self._arm_timer(self.ctx.config.limits.idle_timeout)
        if type(event) is MailRequest:
            tx.received(event.line)
            if self._mail_needs_lookup(event):
                self._wait_for(self._mail(event))
            else:
                self._accept_mail(event)
        elif type(event) is RcptRequest:
            tx.received(event.line)
            self._rcpt(event)
        elif type(event) is DataRequest:
            tx.received(event.line)
            self._data()
        elif type(event) is MessageEnd:
            self._wait_for(self._message_end(event))

    def _wait_for(self, step: Awaitable[None]) -> None:
        """Run an async step; input stays buffered (reading paused) until it has answered."""
        self._busy = True
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.ensure_future(step)
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Future[None]) -> None:
        self._busy = False
        if task.cancelled():
            return
        if task.exception() is not None:
            err = task.exception()
            log.error("session %s: step failed", self.sid, exc_info=err)
            self._internal_error()
        if self._closing:
            return
        assert self.transport is not None
        self.transport.resume_reading()
        self._process()

    def _internal_error(self) -> None:
        log.exception("session %s: internal error", self.sid)
        self._ended_by = metrics.ERROR
        if self.tx is not None:
            self.tx.text("Internal error; transaction reset (details in the server log)")
        if self.proto is not None:
            self.proto.reset()
        if self._spool is not None:
            self._spool.discard()
            self._spool = None
        self._accepted = []
        self._queue_reply(reply.LOCAL_ERROR)
        self._flush()

    # --- commands needing policy ------------------------------------------------------------------
    async def _mail(self, event: MailRequest) -> None:
        tx = self.tx
        assert tx is not None and self.proto is not None
        ctx = self.ctx
        if self._rdns is not None and ctx.config.policy.client_rdns == "reject":
            verdict = await self._rdns
            if verdict is not None and not verdict.accepted:
                self._queue_reply(verdict.reply)
                return
        verdict = await ctx.policy.check_sender(event.args.address)
        if verdict is not None:
            tx.text(verdict.evidence or "")
            if not verdict.accepted:
                self._queue_reply(verdict.reply)
                return
        self._accept_mail(event)

    def _mail_needs_lookup(self, event: MailRequest) -> bool:
        """Most MAIL commands need no DNS (check off, null or local sender, rDNS only logged):
        those are answered at once, without a task."""
        policy = self.ctx.config.policy
        if self._rdns is not None and policy.client_rdns == "reject":
            return True
        return self.ctx.policy.sender_needs_check(event.args.address)

    def _accept_mail(self, event: MailRequest) -> None:
        assert self.proto is not None
        self.proto.accept_mail(event.args)
        self._accepted = []
        self._queue_reply(reply.sender_ok(event.args.path))

    def _rcpt(self, event: RcptRequest) -> None:
        assert self.tx is not None and self.proto is not None
        verdict = self.ctx.policy.check_rcpt(event.args.address, trusted=self._trusted)
        if verdict.evidence:
            self.tx.text(verdict.evidence)
        if verdict.accepted:
            self.proto.accept_rcpt(event.args)
            self._accepted.append((str(event.args.address) if event.args.address.domain
                                   else event.args.path, verdict.targets, verdict.forward))
        self._queue_reply(verdict.reply)

    def _data(self) -> None:
        assert self.proto is not None
        ctx = self.ctx
        self._msgid = ctx.ids.new()
        self._spool = ctx.store.spool(self._msgid)
        self._data_started = time.monotonic()
        self.proto.begin_data(self._spool)
        self._queue_reply(reply.START_DATA)
        self._arm_timer(ctx.config.limits.data_timeout)

    async def _message_end(self, event: MessageEnd) -> None:
        tx = self.tx
        spool = self._spool
        assert tx is not None and spool is not None
        self._spool = None
        elapsed = time.monotonic() - self._data_started
        tx.event(fmt.data_bytes("<<<", event.raw, elapsed))
        tx.event(fmt.START_PROCESSING)
        accepted, self._accepted = self._accepted, []
        count = len(accepted)
        sender = event.mail.path
        if event.error is not None:
            spool.discard()
            tx.text(f"Message refused at end of data: {event.error.lines[-1]}")
            duration = fmt.hms(time.monotonic() - self._data_started)
            for rcpt, _targets, _fwd in accepted:
                tx.event(fmt.summary(sender, rcpt, count, event.size, duration, "REJECTED",
                                     self._msgid))
            self._queue_reply(event.error)
            return
        ctx = self.ctx
        envelope = Envelope(
            msgid=self._msgid,
            sender=sender,
            recipients=[Recipient(t, rcpt, not fwd and ctx.policy.is_local(t))
                        for rcpt, targets, fwd in accepted for t in targets],
            received_at=time.time(),
            client_ip=self.peer_ip,
            helo=self.proto.helo_name or "" if self.proto is not None else "",
            size=event.size,
        )
        if self._rdns is not None and not self._rdns.done():
            # The Received header names the client's verified host: wait for the lookup that
            # started at connect (bounded by [dns] timeout) rather than write "unknown".
            with contextlib.suppress(Exception):
                await asyncio.shield(self._rdns)
        header = self._received_header(accepted)
        body = spool.in_memory()  # kept for the runner: local delivery need not re-read the queue
        await ctx.store.commit(envelope, header, spool)
        duration = fmt.hms(time.monotonic() - self._data_started)
        for rcpt, _targets, _fwd in accepted:
            tx.event(fmt.summary(sender, rcpt, count, event.size, duration, "OK", self._msgid))
        self._queue_reply(reply.accepted(event.size, duration, self._msgid))
        self._messages += 1
        if self._metrics is not None:
            self._metrics.message_received(self.listener, event.size)
        ctx.runner.submit(envelope, header + body if body is not None else None)

    def _received_header(self, accepted: list[tuple[str, tuple[str, ...], bool]]) -> bytes:
        # RFC 5321 §4.4 trace information, with the message ID that joins the log lines.
        assert self.proto is not None
        ctx = self.ctx
        proto = "ESMTP" if self.proto.esmtp else "SMTP"
        name = self._rdns_name or "unknown"
        helo = fmt.sanitize(self.proto.helo_name or "")
        for_clause = f"\r\n\tfor <{accepted[0][0]}>" if len(accepted) == 1 else ""
        return (f"Received: from {helo} ({name} [{self.peer_ip}])\r\n"
                f"\tby {ctx.config.server.hostname} (mailferry) with {proto} id {self._msgid}"
                f"{for_clause};\r\n\t{ctx.date()}\r\n").encode("ascii", "replace")

    async def _check_client(self) -> object:
        verdict = await self.ctx.policy.check_client(self.peer_ip)
        if verdict is not None and self.tx is not None and not self._closing:
            self._rdns_name = verdict.name
            self.tx.text(verdict.evidence or "")
        return verdict

    # --- output -----------------------------------------------------------------------------------
    def _queue_reply(self, r: Reply) -> None:
        assert self.tx is not None
        self.tx.sent(r.lines)
        self._out.append(r.encode())
        if r.code >= 400 and self._metrics is not None:
            self._metrics.rejected(r)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def _send(self, r: Reply) -> None:
        self._queue_reply(r)
        self._flush()

    def _close(self) -> None:
        self._flush()
        self._closing = True
        if self.transport is not None:
            self.transport.close()

