"""Outbound delivery end to end: real mailferry daemons, a real DNS server, real foreign peers."""

from __future__ import annotations

import email
import re
import shutil
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.fakedns import FakeDNS
from tests.support.postfix import SmtpSink
from tests.support.smtp_peer import Peer

OUT = "127.0.0.2       ["  # lines of sessions A opened (A's source address on the left)
FAST_RETRY = {"retry_schedule": [1, 1, 1], "retry_every": 1, "delay_warning": 0}


def _shared_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (MX hosts are reached on [delivery] port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as t:
                    t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


def _mta(root: Path, dns: FakeDNS, host: str, port: int, domain: str,
         **extra: dict[str, object]) -> Daemon:
    ip, dport = dns.nameserver
    overrides: dict[str, dict[str, object]] = {
        "dns": {"nameservers": [f"{ip}:{dport}"], "timeout": 2},
        "delivery": {"port": port, "connect_timeout": 3, "command_timeout": 10,
                     "source_address": host},
        "queue": dict(FAST_RETRY),
    }
    for section, keys in extra.items():
        overrides.setdefault(section, {}).update(keys)
    daemon = Daemon(root, host=host, port=port, domains=(domain,), hostname=f"mx.{domain}",
                    overrides=overrides)
    return daemon


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    with FakeDNS() as server:
        server.add("a.test", "MX", "10 mx.a.test")
        server.add("mx.a.test", "A", "127.0.0.2")
        server.add("b.test", "MX", "10 mx.b.test")
        server.add("mx.b.test", "A", "127.0.0.3")
        yield server


def _send(daemon: Daemon, sender: str, rcpts: list[str], subject: str) -> str:
    with smtplib.SMTP(daemon.host, daemon.port) as client:
        client.ehlo("client.a.test")
        client.mail(sender)
        for r in rcpts:
            client.rcpt(r)
        code, text = client.data(f"Subject: {subject}\r\n\r\nhello\r\n".encode())
        assert code == 250, text
    return re.search(rb"Message id (MF\w+)", text).group(1).decode()


def test_two_mailferry_instances_joined_by_message_id(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    b = _mta(tmp_path / "b", dns, "127.0.0.3", port, "b.test")
    a.add_user("alice@a.test")
    b.add_user("bob@b.test")
    with a, b:
        msgid = _send(a, "alice@a.test", ["bob@b.test"], "across")
        [path] = b.wait_messages("bob@b.test", 1)
        msg = email.message_from_bytes(path.read_bytes())
        assert msg["Subject"] == "across"
        received = msg.get_all("Received")
        assert len(received) == 2 and msgid in received[1]  # A's header, below B's own
        # the outgoing session: our own address on the left, because we connected
        out = a.wait_line("127.0.0.2       [", "***", "<bob@b.test>", "OK", msgid)
        sid = re.search(r"\[(\w{4})\] \S+ \*\*\* <alice@a.test> <bob@b.test> 1 \d+ \S+ OK",
                        out).group(1)
        # the connection is kept ~2 s for another message (connection reuse), then closed
        a.wait_line(f"[{sid}]", "Disconnected")
        a_log = a.log_text()
        outgoing = [x for x in a_log.splitlines() if f"[{sid}]" in x]
        bodies = [x[x.index("] ") + 11:] for x in outgoing]
        assert bodies[0].startswith("DNS query MX b.test: ")
        assert bodies[0] == "DNS query MX b.test: mx.b.test (10)"
        assert bodies[1].startswith("Route: ")
        assert bodies[2] == f"Connecting to mx.b.test [127.0.0.3]:{port}"
        assert bodies[3] == "Connected"
        assert bodies[4].startswith("<<< 220 mx.b.test ESMTP")
        assert "EHLO mx.a.test" in bodies[5]
        assert any(x.startswith(">>> MAIL FROM:<alice@a.test> SIZE=") for x in bodies)
        assert any(re.match(r">>> \d+ bytes \(overall data transfer speed=\d+ B/s\)", x)
                   for x in bodies)
        assert bodies[-1] == "Disconnected"
        # B's inbound session for the same message, in B's log, from A's address
        b_line = b.wait_line("<<< EHLO mx.a.test")
        assert b_line.startswith("127.0.0.2 ")
        # the queue of A is empty again
        deadline = time.monotonic() + 10
        while a.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.queued() == []


def test_retry_451_twice_then_delivered(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    dns.add("c.test", "MX", "10 mx.c.test")
    dns.add("mx.c.test", "A", "127.0.0.3")
    peer = Peer("127.0.0.3", port,
                data_reply=lambda n: "451 4.3.0 try later" if n <= 2 else "250 2.0.0 queued as P3")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test"], "retry me")
        deadline = time.monotonic() + 30
        while not peer.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(peer.received) == 1 and peer.datas_seen == 3
        assert b"Subject: retry me" in peer.received[0].data
        log = a.wait_line(OUT, "***", "OK", msgid)
        assert log
        text = a.log_text()
        assert text.count(f"DEFERRED {msgid}") == 2
        assert "attempt 2; Next retry at" in text
        assert "250 2.0.0 queued as P3" in text


def test_550_bounces_to_local_sender_with_remote_text(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    dns.add("c.test", "MX", "10 mx.c.test")
    dns.add("mx.c.test", "A", "127.0.0.3")
    peer = Peer("127.0.0.3", port, rcpt_reply=lambda a, _n: (
        "550 5.1.1 <nobody@c.test>: Recipient address rejected: User unknown"
        if a.startswith("nobody") else "250 2.1.5 OK"))
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["nobody@c.test", "carol@c.test"], "half fails")
        [path] = a.wait_messages("alice@a.test", 1)
        dsn = email.message_from_bytes(path.read_bytes())
        assert dsn.get_content_type() == "multipart/report"
        assert dsn.get_param("report-type") == "delivery-status"
        body = path.read_bytes()
        assert b"User unknown" in body and b"nobody@c.test" in body
        assert b"Subject: half fails" in body  # the original headers are attached
        assert dsn["Return-Path"] == "<>"
        # carol was not failed by nobody's 550
        deadline = time.monotonic() + 10
        while not peer.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert peer.received[0].recipients == ["carol@c.test"]
        a.wait_line(OUT, "***", "<nobody@c.test>", "FAILED", msgid)
        a.wait_line("Bounce", f"for {msgid}")


@pytest.mark.parametrize(("records", "code"), [
    ([("MX", "0 .")], "5.1.10"),  # null MX (RFC 7505)
    ([], "5.1.2"),  # NXDOMAIN
])
def test_undeliverable_domains_bounce(tmp_path: Path, dns: FakeDNS,
                                      records: list[tuple[str, str]], code: str) -> None:
    for rtype, value in records:
        dns.add("dead.test", rtype, value)
    port = _shared_port("127.0.0.2")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with a:
        msgid = _send(a, "alice@a.test", ["x@dead.test"], "nowhere")
        [path] = a.wait_messages("alice@a.test", 1)
        assert f"Status: {code}".encode() in path.read_bytes()
        a.wait_line(OUT, "***", "<x@dead.test>", "FAILED", msgid)


def test_servfail_is_retried_not_bounced(tmp_path: Path, dns: FakeDNS) -> None:
    dns.add("flaky.test", "SERVFAIL")
    port = _shared_port("127.0.0.2")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with a:
        msgid = _send(a, "alice@a.test", ["x@flaky.test"], "later")
        a.wait_line(f"DEFERRED {msgid}")
        a.wait_line(f"Deferred {msgid}", "attempt 2;")  # retried on the schedule
        assert a.messages("alice@a.test") == []  # no bounce
        assert msgid in a.queued()


def test_first_mx_refuses_second_used(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.4", "127.0.0.3")
    dns.add("two.test", "MX", "10 mx1.two.test")
    dns.add("two.test", "MX", "20 mx2.two.test")
    dns.add("mx1.two.test", "A", "127.0.0.4")  # nothing listens there
    dns.add("mx2.two.test", "A", "127.0.0.3")
    peer = Peer("127.0.0.3", port)
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["x@two.test"], "second")
        a.wait_line(OUT, "***", "OK", msgid)
        text = a.log_text()
        assert f"Connecting to mx1.two.test [127.0.0.4]:{port} failed: connection refused" in text
        assert f"Connecting to mx2.two.test [127.0.0.3]:{port}" in text
        assert len(peer.received) == 1


@pytest.mark.skipif(shutil.which("smtp-sink") is None,
                    reason="Postfix's smtp-sink is installed by scripts/setup.sh")
def test_postfix_smtp_sink_as_foreign_server(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    dns.add("sink.test", "MX", "10 mx.sink.test")
    dns.add("mx.sink.test", "A", "127.0.0.3")
    sink = SmtpSink(port=port, host="127.0.0.3", dump_dir=tmp_path / "sink")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    sink.start()
    try:
        with a:
            msgid = _send(a, "alice@a.test", ["x@sink.test", "y@sink.test"], "to postfix")
            a.wait_line(OUT, "***", "<y@sink.test>", "OK", msgid)
            text = a.log_text()
            assert "<<< 250-PIPELINING" in text or "<<< 250 PIPELINING" in text
        deadline = time.monotonic() + 10
        dumps: list[Path] = []
        while not dumps and time.monotonic() < deadline:
            dumps = list((tmp_path / "sink").iterdir())
            time.sleep(0.05)
        assert dumps and b"Subject: to postfix" in dumps[0].read_bytes()
    finally:
        sink.stop()


def test_one_connection_carries_several_messages(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    dns.add("c.test", "MX", "10 mx.c.test")
    dns.add("mx.c.test", "A", "127.0.0.3")
    peer = Peer("127.0.0.3", port)
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test", delivery={"per_domain": 1})
    a.add_user("alice@a.test")
    with peer, a:
        ids = [_send(a, "alice@a.test", [f"u{i}@c.test"], f"reuse {i}") for i in range(3)]
        for msgid in ids:
            a.wait_line(OUT, "***", "OK", msgid)
        text = a.log_text()
        sids = {re.search(r"\[(\w{4})\]", x).group(1) for x in text.splitlines()
                if x.startswith(OUT) and "***" in x}
        connects = [x for x in text.splitlines() if "Connecting to mx.c.test" in x]
        # The connection waits 2 s for the next message; the next two come within that, so
        # all three share one session (one connect, one SID), each reuse checked with RSET.
        assert len(connects) == 1 and len(sids) == 1
        assert text.count(">>> RSET") == 2
        assert len(peer.received) == 3
