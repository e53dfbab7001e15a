"""Listeners: open the configured ports and hold what every session shares (ServerContext).

Connection limits live here: sessions in total and per client IP (``421`` when over, RFC 5321
§3.8), and a listen backlog large enough for a burst of simultaneous connects (Python's
socketserver default of 5 drops them).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate

from mailferry import reply
from mailferry.config import Config, ListenerConfig
from mailferry.ids import MessageIdFactory, SessionIdPool
from mailferry.inbound.blocks import BlockStore
from mailferry.inbound.guard import Block, Guard, Reason, canonical_ip
from mailferry.inbound.policy import Policy
from mailferry.inbound.session import Session
from mailferry.metrics import Metrics
from mailferry.queue.runner import Runner
from mailferry.queue.store import QueueStore
from mailferry.reply import Reply
from mailferry.smtp.server import Limits
from mailferry.txlog import format as fmt
from mailferry.txlog.writer import TxLog

log = logging.getLogger("mailferry.guard")


@dataclass
class ServerContext:
    config: Config
    txlog: TxLog
    policy: Policy
    store: QueueStore
    runner: Runner
    guard: Guard
    blocks: BlockStore
    tls: ssl.SSLContext | None = None  # [tls]; None: no STARTTLS, no AUTH, no smtps
    ids: MessageIdFactory = field(default_factory=MessageIdFactory)
    sids: SessionIdPool = field(default_factory=SessionIdPool)
    sessions: set[Session] = field(default_factory=set)
    per_ip: Counter[str] = field(default_factory=Counter)
    metrics: Metrics | None = None
    _date_second: int = -1
    _date: str = ""

    @property
    def limits(self) -> Limits:
        lim = self.config.limits
        return Limits(line_length=lim.line_length, message_size=lim.message_size,
                      recipients=lim.recipients,
                      accept_long_lines=self.config.policy.long_text_lines == "accept")

    def date(self) -> str:
        """RFC 5322 date for the banner and Received headers, formatted once per second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, localtime=True)
        return self._date

    def impose(self, block: Block) -> None:
        """Put a client on the block list (written in the background) and count it."""
        self.blocks.add(block)
        if self.metrics is not None:
            self.metrics.blocked(block.reason)  # a reason code: a small fixed set
        log.warning("blocked %s for %g s: %s (%s)", block.ip, block.expires - block.created,
                    block.reason, block.detail)

    # For the server's other doors (the web UI's login): the same block list and counters as
    # the SMTP sessions, [relay] networks exempt as there.
    def client_blocked(self, ip: str) -> Block | None:
        key = self._untrusted_key(ip)
        return self.blocks.get(key) if key else None

    def offence(self, ip: str, reason: Reason) -> Block | None:
        """Count one offence seen outside an SMTP session; block the address when it trips."""
        key = self._untrusted_key(ip)
        block = self.guard.count(key, reason) if key else None
        if block is not None:
            self.impose(block)
            self.txlog.system(fmt.blocked(block.ip, block.expires - block.created, block.reason,
                                          block.detail))
        return block

    def _untrusted_key(self, ip: str) -> str:
        if self.policy.client_trusted(ip):
            return ""
        try:
            return canonical_ip(ip)
        except ValueError:
            return ""

    def admit(self, session: Session) -> Reply | None:
        limits = self.config.limits
        if len(self.sessions) >= limits.sessions:
            if session.tx is not None:
                session.tx.text(f"Refused: {limits.sessions} sessions already open")
            return reply.TOO_MANY_SESSIONS
        if self.per_ip[session.peer_ip] >= limits.sessions_per_ip:
            if session.tx is not None:
                session.tx.text(
                    f"Refused: {limits.sessions_per_ip} sessions already open from this address")
            return reply.TOO_MANY_FROM_IP
        self.sessions.add(session)
        self.per_ip[session.peer_ip] += 1
        return None

    def release(self, session: Session) -> None:
        self.sessions.discard(session)
        self.per_ip[session.peer_ip] -= 1
        if self.per_ip[session.peer_ip] <= 0:
            del self.per_ip[session.peer_ip]


async def start_listener(ctx: ServerContext, listener: ListenerConfig) -> asyncio.Server:
    """Listen for one [[listener]]. An smtps listener is a plain socket too: its sessions start
    TLS themselves (Session._handshake), so that a failed handshake is logged like the rest."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Session(ctx, listener),
        host=listener.host,
        port=listener.port,
        backlog=ctx.config.limits.backlog,
        reuse_address=True,
    )
