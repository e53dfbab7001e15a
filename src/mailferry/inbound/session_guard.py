"""Intrusion prevention inside an SMTP session: the hooks that count a client's offences.

A mixin of :class:`~mailferry.inbound.session.Session`, kept apart so that the session reads as
SMTP and this file as policy on abuse. The rules (windows, thresholds) are in guard.py, the block
list in blocks.py; here is only *when* the session counts, and what it does when a rule trips:
the client is blocked, told ``421`` and the session closes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from mailferry import reply
from mailferry.inbound.guard import Block, Reason, canonical_ip
from mailferry.reply import Reply
from mailferry.txlog import format as fmt

if TYPE_CHECKING:
    from mailferry.config import ListenerConfig
    from mailferry.inbound.listener import ServerContext
    from mailferry.smtp.server import MailRequest
    from mailferry.txlog.writer import SessionLog


class SessionProtection:
    # What the session provides (see Session.__init__).
    ctx: ServerContext
    tx: SessionLog | None
    listener: ListenerConfig
    peer_ip: str
    auth_user: str | None
    _trusted: bool
    _ip_key: str
    _greet_timer: asyncio.TimerHandle | None
    _connected_at: float
    _rate_keys: tuple[str | None, str | None]

    if TYPE_CHECKING:
        def _queue_reply(self, r: Reply) -> None: ...

        def _close(self) -> None: ...

    def _guard_connect(self) -> Reply | None:
        """An untrusted client connects: refuse it when blocked, count the connection."""
        ctx = self.ctx
        assert self.tx is not None
        try:
            self._ip_key = canonical_ip(self.peer_ip)
        except ValueError:  # not an IP socket (tests over a UNIX socket): nothing to key on
            return None
        block = ctx.blocks.get(self._ip_key)
        if block is not None:
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(block.expires))
            self.tx.text(fmt.refused_blocked(self._ip_key, until, block.reason, block.detail))
            return reply.client_blocked(block.reason)
        tripped = ctx.guard.count(self._ip_key, Reason.CONNRATE)
        if tripped is not None:
            self._impose(tripped)
            return reply.client_now_blocked(tripped.reason)
        return None

    def _count(self, reason: Reason) -> bool:
        """Count one offence of this client. When that trips its rule, the client is blocked,
        told ``421`` and the session closes: returns True (the caller stops)."""
        if self._trusted or not self._ip_key:
            return False
        block = self.ctx.guard.count(self._ip_key, reason)
        if block is None:
            return False
        self._impose(block)
        self._queue_reply(reply.client_now_blocked(block.reason))
        self._close()
        return True

    def _impose(self, block: Block) -> None:
        """Put a tripped client on the block list and say so in this session's log."""
        self.ctx.impose(block)
        assert self.tx is not None
        self.tx.text(fmt.blocked(block.ip, block.expires - block.created, block.reason,
                                 block.detail))

    def _auth_failed(self) -> bool:
        """Called by AUTH after each failed attempt, once its 535 is queued (tls-auth branch):
        counts AUTHFAIL. True when that blocked the client: the session is closing (421 sent)."""
        return self._count(Reason.AUTHFAIL)

    def _pregreet(self, data: bytes) -> None:
        """The client sent something before the greeting (greeting_delay)."""
        assert self.tx is not None
        if self._greet_timer is not None:
            self._greet_timer.cancel()
            self._greet_timer = None
        waited = asyncio.get_running_loop().time() - self._connected_at
        first = data.split(b"\r\n", 1)[0][:80].decode("ascii", "backslashreplace")
        self.tx.text(fmt.pregreet(len(data), waited, first))
        self._queue_reply(reply.PREGREET)
        if self._ip_key:
            block = self.ctx.guard.count(self._ip_key, Reason.PREGREET)
            if block is not None:
                self._impose(block)
        self._close()

    def _count_oversize(self) -> None:
        # An authenticated user resending a too-big attachment is a person, not an attack:
        # blocking their address (often a whole office behind NAT) would punish the wrong thing.
        if self.auth_user is None:
            self._count(Reason.OVERSIZE)

    def _message_rate_refused(self, event: MailRequest) -> bool:
        """Per-user / per-sender message limits ([protection]): 450 when over (not a block)."""
        guard = self.ctx.guard
        user = self.auth_user if guard.applies_to_user() else None
        address = event.args.address
        sender = (str(address) if address is not None and guard.applies_to_sender()
                  and self.listener.kind in ("submission", "smtps") else None)
        self._rate_keys = (user, sender)
        why = guard.message_refusal(user, sender)
        if why is None:
            return False
        assert self.tx is not None
        self.tx.text(fmt.message_rate_limited(why))
        self._queue_reply(reply.MESSAGE_RATE)
        return True
