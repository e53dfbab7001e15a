"""A recording SMTP peer for tests: aiosmtpd in a thread, with replies the test chooses.

It plays a foreign receiving server for outbound delivery tests: answer ``451`` twice and then
``250``, or ``550`` for one recipient, refuse EHLO so the client must fall back to HELO, offer
STARTTLS with a test certificate — and keep every message it accepted, with how it arrived (TLS
or not, EHLO or HELO, the MAIL parameters), so tests assert on what really went over the wire.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

if TYPE_CHECKING:
    import trustme


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool = False  # the message came after STARTTLS
    esmtp: bool = True  # the client said EHLO (False: HELO)
    helo: str = ""  # the name the client gave in EHLO/HELO
    mail_options: list[str] = field(default_factory=list)  # e.g. ["SIZE=123"]


@dataclass
class Peer:
    host: str
    port: int
    # Called for each RCPT (address, count of RCPTs seen so far) → reply, e.g. "250 OK".
    rcpt_reply: Callable[[str, int], str] = lambda _a, _n: "250 2.1.5 OK"
    # Called at end of data (count of DATA so far) → reply.
    data_reply: Callable[[int], str] = lambda _n: "250 2.0.0 OK: queued as PEER1"
    # The whole reply to EHLO when set, e.g. "502 5.5.2 Command not implemented" for a server
    # that only knows HELO (RFC 5321 §4.1.1.1 lets a client fall back then).
    ehlo_reply: str | None = None
    # Offer STARTTLS with this server context (see tls_context()).
    tls_context: ssl.SSLContext | None = None
    server_hostname: str = "peer.test"
    received: list[Received] = field(default_factory=list)
    rcpts_seen: int = 0
    datas_seen: int = 0
    ehlos_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # This signature (with ``responses``) is aiosmtpd's "new" hook: what it returns replaces
        # the EHLO reply, and the hook must record the client's name itself.
        with self.lock:
            self.ehlos_seen += 1
        if self.ehlo_reply is not None:
            return [self.ehlo_reply]
        session.host_name = hostname
        return responses

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
                self.received.append(Received(
                    envelope.mail_from, list(envelope.rcpt_tos), data,
                    tls=session.ssl is not None, esmtp=bool(session.extended_smtp),
                    helo=session.host_name or "", mail_options=list(envelope.mail_options)))
        return answer

    def recipients(self) -> list[str]:
        """Every recipient of every accepted message, in order (repeats show duplicates)."""
        with self.lock:
            return [r for msg in self.received for r in msg.recipients]

    def start(self) -> Peer:
        kwargs: dict[str, object] = {}
        if self.tls_context is not None:
            # STARTTLS offered, not required: the client decides (opportunistic TLS).
            kwargs = {"tls_context": self.tls_context, "require_starttls": False}
        self._controller = Controller(self, hostname=self.host, port=self.port,
                                      server_hostname=self.server_hostname, ready_timeout=10,
                                      **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tls_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for ``names`` issued by the test ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def write_ca(ca: trustme.CA, path: Path) -> Path:
    """The CA certificate as PEM, for ``[delivery] tls_ca_file``."""
    ca.cert_pem.write_to_path(str(path))
    return path
