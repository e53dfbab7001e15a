"""A mail scene for the web UI tests: a real daemon with its HTTP server, a foreign peer as the
smart host, and messages whose stories the UI must tell (local delivery, a remote delivery,
a remote 550 and the bounce it causes, a remote 451 that keeps a message in the queue).
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import Daemon, free_port
from tests.support.smtp_peer import Peer

PEER_HOST = "127.0.0.3"


@dataclass
class Scene:
    daemon: Daemon
    peer: Peer
    local_msgid: str  # bob → alice, delivered to alice's mailbox
    relayed_msgid: str  # alice → carol@c.test (delivered) and nobody@c.test (550 → bounce)
    deferred_msgid: str  # bob → slow@c.test: 451, waits in the queue for its next attempt


def send(daemon: Daemon, sender: str, rcpts: list[str], subject: str,
         helo: str = "client.example.test") -> str:
    with smtplib.SMTP(daemon.host, daemon.port) as client:
        client.ehlo(helo)
        client.mail(sender)
        for r in rcpts:
            client.rcpt(r)
        code, text = client.data(f"Subject: {subject}\r\n\r\nhello\r\n".encode())
        assert code == 250, text
    found = re.search(rb"Message id (MF\w+)", text)
    assert found, text
    return found.group(1).decode()


@contextmanager
def mail_scene(root: Path, **overrides: dict[str, object]) -> Iterator[Scene]:
    port = free_port(PEER_HOST)
    peer = Peer(PEER_HOST, port, rcpt_reply=_peer_reply)
    sections: dict[str, dict[str, object]] = {
        "relay": {"host": f"{PEER_HOST}:{port}"},
        "delivery": {"connect_timeout": 3, "command_timeout": 10},
        # Long enough that the deferred message sits still in the queue during a test.
        "queue": {"retry_schedule": [900], "retry_every": 900, "delay_warning": 0},
    }
    for section, keys in overrides.items():
        sections.setdefault(section, {}).update(keys)
    daemon = Daemon(root, http=True, overrides=sections)
    daemon.add_user("alice@example.test")
    daemon.add_user("bob@example.test")
    with peer, daemon:
        local = send(daemon, "bob@example.test", ["alice@example.test"], "hello alice")
        relayed = send(daemon, "alice@example.test", ["carol@c.test", "nobody@c.test"],
                       "half fails")
        deferred = send(daemon, "bob@example.test", ["slow@c.test"], "greylisted")
        daemon.wait_line("Bounce", f"for {relayed}", timeout=20)
        daemon.wait_messages("alice@example.test", 2)  # bob's message and the bounce
        daemon.wait_line(f"DEFERRED {deferred}", timeout=20)
        deadline = time.monotonic() + 10
        while daemon.queued() != [deferred] and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_all_closed(daemon)
        yield Scene(daemon, peer, local, relayed, deferred)


def _peer_reply(address: str, _count: int) -> str:
    if address.startswith("nobody"):
        return "550 5.1.1 <nobody@c.test>: Recipient address rejected: User unknown"
    if address.startswith("slow"):
        return "451 4.7.1 <slow@c.test>: Greylisted, try again later"
    return "250 2.1.5 OK"


_OPENED = re.compile(r"^\S+\s+\[\w{4}\] \d\d:\d\d:\d\d Connected", re.M)
_CLOSED = re.compile(r"^\S+\s+\[\w{4}\] \d\d:\d\d:\d\d Disconnected$", re.M)


def wait_all_closed(daemon: Daemon, timeout: float = 15.0) -> None:
    """Until every session in the log has ended (a delivery connection stays open ~2 s for
    reuse): the lists are then green and red, no longer yellow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = daemon.log_text()
        if len(_OPENED.findall(text)) <= len(_CLOSED.findall(text)):
            return
        time.sleep(0.1)
    raise TimeoutError("sessions still open in the transaction log")
