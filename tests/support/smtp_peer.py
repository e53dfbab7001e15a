"""A recording SMTP peer for tests: aiosmtpd in a thread, with replies the test chooses.

It plays a foreign receiving server for outbound delivery tests: answer ``451`` twice and then
``250``, or ``550`` for one recipient, and keep every message it accepted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class Peer:
    host: str
    port: int
    # Called for each RCPT (address, count of RCPTs seen so far) → reply, e.g. "250 OK".
    rcpt_reply: Callable[[str, int], str] = lambda _a, _n: "250 2.1.5 OK"
    # Called at end of data (count of DATA so far) → reply.
    data_reply: Callable[[int], str] = lambda _n: "250 2.0.0 OK: queued as PEER1"
    received: list[Received] = field(default_factory=list)
    rcpts_seen: int = 0
    datas_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        with self.lock:
            self.rcpts_seen += 1
            answer = self.rcpt_reply(address, self.rcpts_seen)
        if answer.startswith("2"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        with self.lock:
            self.datas_seen += 1
            answer = self.data_reply(self.datas_seen)
            if answer.startswith("2"):
                data = envelope.original_content or b""
                self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), data))
        return answer

    def start(self) -> Peer:
        self._controller = Controller(self, hostname=self.host, port=self.port,
                                      server_hostname="peer.test", ready_timeout=10)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
