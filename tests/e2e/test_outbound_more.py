"""Outbound delivery end to end, part two: TLS, HELO fallback, smart host, crash safety, delay
warnings, expiry, null sender, per-recipient outcomes and unsendable alias targets.

Real ``mailferry serve`` processes, a real DNS server and real aiosmtpd peers, all on loopback;
every wait polls a file, the log or the peer's record against a deadline.
"""

from __future__ import annotations

import email
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest
import trustme

from tests.e2e.test_outbound import OUT, _mta, _send, _shared_port
from tests.support.daemon import Daemon, free_port
from tests.support.fakedns import FakeDNS
from tests.support.smtp_peer import Peer, tls_context, write_ca


def always_451(_address: str, _count: int) -> str:
    return "451 4.3.0 mailbox busy, try later"


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    # a.test is the sending mailferry's own domain; c.test's MX is where the peers listen.
    with FakeDNS() as server:
        server.add("a.test", "MX", "10 mx.a.test")
        server.add("mx.a.test", "A", "127.0.0.2")
        server.add("c.test", "MX", "10 mx.c.test")
        server.add("mx.c.test", "A", "127.0.0.3")
        yield server


def _until(what: str, ready: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {timeout}s")
        time.sleep(0.05)


def _queue_empty(daemon: Daemon) -> None:
    _until("an empty queue", lambda: daemon.queued() == [])


def _session_of(daemon: Daemon, line: str) -> list[str]:
    """Every log line of the session ``line`` belongs to (same peer column and SID)."""
    head = line[:line.index("]") + 1]
    return [x for x in daemon.log_text().splitlines() if x.startswith(head)]


def _dsn(path: Path) -> tuple[Message, str]:
    raw = path.read_bytes()
    return email.message_from_bytes(raw), raw.decode("ascii", "replace")


# --- 1. opportunistic STARTTLS ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["unverified", "verified", "off"])
def test_starttls(tmp_path: Path, dns: FakeDNS, mode: str) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    ca = trustme.CA()
    # The certificate names the MX host: with our CA configured it verifies (RFC 7672 style
    # name check); without it the client still encrypts but records "not verified".
    peer = Peer("127.0.0.3", port, tls_context=tls_context(ca, "mx.c.test"))
    delivery: dict[str, object] = {}
    if mode == "verified":
        delivery["tls_ca_file"] = str(write_ca(ca, tmp_path / "ca.pem"))
    if mode == "off":
        delivery["tls"] = "off"
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test", delivery=delivery)
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test"], f"tls {mode}")
        done = a.wait_line(OUT, "***", "<carol@c.test>", "OK", msgid)
        session = "\n".join(_session_of(a, done))
        [got] = peer.received
        assert b"Subject: tls " in got.data
        assert "<<< 250-STARTTLS" in session  # offered every time
        if mode == "off":
            assert ">>> STARTTLS" not in session
            assert "TLS established" not in session
            assert got.tls is False
            return
        assert got.tls is True
        established = re.search(r"TLS established: (TLSv1\.[23]) \S+, certificate (.*)", session)
        assert established is not None, session
        if mode == "verified":
            assert established.group(2) == "verified"
            assert "did not verify" not in session
        else:
            assert established.group(2) == "not verified"
            # first the verifying handshake failed, then a second connection encrypted anyway
            assert "did not verify" in session
            assert session.count(f"Connecting to mx.c.test [127.0.0.3]:{port}") == 2
        # RFC 3207 §4.2: EHLO again after the handshake, and the transaction only then
        after_tls = session[session.index("TLS established"):]
        assert ">>> EHLO mx.a.test" in after_tls and ">>> MAIL FROM:<alice@a.test>" in after_tls


# --- 2. HELO fallback -------------------------------------------------------------------------
def test_ehlo_refused_falls_back_to_helo_without_extensions(tmp_path: Path,
                                                            dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port, ehlo_reply="502 5.5.2 Error: command not recognized")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test"], "old server")
        done = a.wait_line(OUT, "***", "<carol@c.test>", "OK", msgid)
        bodies = [x[x.index("] ") + 11:] for x in _session_of(a, done)]
        ehlo = bodies.index(">>> EHLO mx.a.test")
        assert bodies[ehlo + 1] == "<<< 502 5.5.2 Error: command not recognized"
        assert bodies[ehlo + 2] == ">>> HELO mx.a.test"
        # no extensions after HELO: plain MAIL FROM, no SIZE= (RFC 1870 needs EHLO)
        assert ">>> MAIL FROM:<alice@a.test>" in bodies
        [got] = peer.received
        assert got.esmtp is False and got.helo == "mx.a.test"
        assert got.mail_options == []


# --- 3. smart host ----------------------------------------------------------------------------
def test_smart_host_takes_everything_without_mx_lookup(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    relay_port = free_port("127.0.0.5")
    direct = Peer("127.0.0.3", port)  # c.test's real MX: must not be used
    smart = Peer("127.0.0.5", relay_port, server_hostname="relay.test")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test",
             relay={"host": f"127.0.0.5:{relay_port}"})
    a.add_user("alice@a.test")
    with direct, smart, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test", "x@nowhere.test"], "via relay")
        done = a.wait_line(OUT, "***", "<x@nowhere.test>", "OK", msgid)
        session = _session_of(a, done)
        # one session for both domains, straight to the smart host
        assert any(f"Connecting to 127.0.0.5 [127.0.0.5]:{relay_port}" in x for x in session)
        assert any("<carol@c.test>" in x and " OK " in x for x in session)
        assert "DNS query MX" not in a.log_text()
        assert sorted(smart.recipients()) == ["carol@c.test", "x@nowhere.test"]
        assert direct.received == [] and direct.rcpts_seen == 0


def test_smart_host_fallback_only_after_direct_failure(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3", "127.0.0.4")
    relay_port = free_port("127.0.0.5")
    dns.add("down.test", "MX", "10 mx.down.test")
    dns.add("mx.down.test", "A", "127.0.0.4")  # nothing listens there: connection refused
    direct = Peer("127.0.0.3", port)
    smart = Peer("127.0.0.5", relay_port, server_hostname="relay.test")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test",
             relay={"host": f"127.0.0.5:{relay_port}", "fallback": True})
    a.add_user("alice@a.test")
    with direct, smart, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test", "dan@down.test"], "fallback")
        a.wait_line(OUT, "***", "<carol@c.test>", "OK", msgid)
        via_relay = a.wait_line(OUT, "***", "<dan@down.test>", "OK", msgid)
        _until("both deliveries", lambda: len(direct.received) + len(smart.received) == 2)
        assert direct.recipients() == ["carol@c.test"]  # direct delivery first, and it worked
        assert smart.recipients() == ["dan@down.test"]  # only what direct delivery could not
        text = a.log_text()
        refused = f"Connecting to mx.down.test [127.0.0.4]:{port} failed: connection refused"
        assert refused in text
        relay_session = "\n".join(_session_of(a, via_relay))
        assert f"Connecting to 127.0.0.5 [127.0.0.5]:{relay_port}" in relay_session
        assert text.index(refused) < text.index(f"[127.0.0.5]:{relay_port}")
        # the direct session deferred dan (its own *** line says so), but the fallback settled
        # him in the same attempt: no retry was scheduled
        assert re.search(rf"DEFERRED {msgid}", relay_session) is None
        assert f"Deferred {msgid}" not in text


# --- 4. crash safety --------------------------------------------------------------------------
def test_recipient_recorded_delivered_is_not_delivered_again_after_kill9(
        tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port, rcpt_reply=lambda addr, _n: (
        "451 4.2.0 dave is busy" if addr.startswith("dave") else "250 2.1.5 OK"))
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test",
             queue={"retry_schedule": [2], "retry_every": 2})
    a.add_user("alice@a.test")
    with peer:
        a.start()
        try:
            msgid = _send(a, "alice@a.test", ["carol@c.test", "dave@c.test"], "once only")
            state = a.data / "queue" / "state" / msgid
            # The state file, not the log, says when the 250 is recorded (the *** line is
            # written a moment before the state): kill only after that.
            _until("carol's delivery in the state file",
                   lambda: state.exists() and '"s":"delivered"' in state.read_text())
            a.kill9()
        finally:
            if a.proc is not None and a.proc.poll() is None:
                a.kill9()
        assert peer.recipients() == ["carol@c.test"]
        peer.rcpt_reply = lambda _a, _n: "250 2.1.5 OK"  # dave's server is fine again
        with a:  # restart on the same queue
            a.wait_line(OUT, "***", "<dave@c.test>", "OK", msgid)
            _queue_empty(a)  # the message is done: nothing can be delivered after this
            assert peer.recipients().count("carol@c.test") == 1
            assert peer.recipients().count("dave@c.test") == 1
            assert len(peer.received) == 2
            text = a.log_text()
            delivered = [x for x in text.splitlines() if x.startswith(OUT)
                         and "*** <alice@a.test> <carol@c.test> " in x and f" OK {msgid}" in x]
            assert len(delivered) == 1
            assert "1 queued message(s) recovered" in text


# --- 5. delay warning -------------------------------------------------------------------------
def test_delay_warning_sent_once(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port, rcpt_reply=always_451)
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test", queue={"delay_warning": 1})
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test"], "slow")
        [path] = a.wait_messages("alice@a.test", 1)
        dsn, text = _dsn(path)
        assert dsn.get_content_type() == "multipart/report"
        assert dsn["Subject"] == "Delayed Mail (still being retried)"
        assert "Action: delayed" in text and "Status: 4.3.0" in text
        assert "Will-Retry-Until:" in text
        assert "host mx.c.test [127.0.0.3] said: 451 4.3.0 mailbox busy" in text
        # two more attempts after the warning: still one warning
        a.wait_line(f"Deferred {msgid}", "attempt 4;", timeout=15)
        log = a.log_text()
        assert log.count("Delay warning MF") == 1 and f"for {msgid}" in log
        assert len(a.messages("alice@a.test")) == 1
        assert msgid in a.queued()  # still being retried


# --- 6. expiry --------------------------------------------------------------------------------
def test_expired_message_bounces_with_last_reply_and_leaves_queue(tmp_path: Path,
                                                                 dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port, rcpt_reply=always_451)
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test", queue={"lifetime": 3})
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test"], "too late")
        [path] = a.wait_messages("alice@a.test", 1, timeout=20)
        dsn, text = _dsn(path)
        assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
        assert "Action: failed" in text
        assert "Status: 4.4.7" in text  # delivery time expired (RFC 3463)
        assert "Diagnostic-Code: smtp; 451 4.3.0 mailbox busy, try later" in text
        assert "host mx.c.test [127.0.0.3] said: 451 4.3.0 mailbox busy" in text
        assert "Subject: too late" in text
        a.wait_line("Expired", msgid, "carol@c.test")
        _queue_empty(a)
        # retried on the schedule until the lifetime ran out (>= 2 rather than the nominal 4,
        # so a slow machine where one attempt takes a second does not fail the test)
        assert peer.rcpts_seen >= 2
        assert len(a.messages("alice@a.test")) == 1


# --- 7. never bounce a bounce -----------------------------------------------------------------
def test_null_sender_failure_creates_no_bounce(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port,
                rcpt_reply=lambda _a, _n: "550 5.1.1 <carol@c.test>: User unknown")
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "", ["carol@c.test"], "a bounce itself")
        a.wait_line(OUT, "***", "<> <carol@c.test>", "FAILED", msgid)
        a.wait_line(f"No bounce for {msgid}", "null sender")
        _queue_empty(a)
        assert "Bounce MF" not in a.log_text()
        assert list((a.data / "mail").rglob("new/*")) == []  # no message in any Maildir
        assert peer.received == []


# --- 8. one 5xx does not fail the others --------------------------------------------------------
def test_5xx_for_one_recipient_others_delivered_in_same_session(tmp_path: Path,
                                                                dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port, rcpt_reply=lambda addr, _n: (
        "550 5.1.1 <nobody@c.test>: Recipient address rejected: User unknown"
        if addr.startswith("nobody") else "250 2.1.5 OK"))
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    with peer, a:
        msgid = _send(a, "alice@a.test", ["carol@c.test", "nobody@c.test", "erin@c.test"],
                      "mixed")
        failed = a.wait_line(OUT, "***", "<nobody@c.test>", "FAILED", msgid)
        session = _session_of(a, failed)
        summaries = [x[x.index("*** "):] for x in session if "*** " in x]
        size = int(failed.split()[-4])
        assert summaries == [
            f"*** <alice@a.test> <{r}> 3 {size} {d} {s} {msgid}" for r, d, s in
            zip(["carol@c.test", "nobody@c.test", "erin@c.test"],
                [x.split()[-3] for x in summaries], ["OK", "FAILED", "OK"], strict=True)]
        assert peer.recipients() == ["carol@c.test", "erin@c.test"]
        [path] = a.wait_messages("alice@a.test", 1)
        _, text = _dsn(path)
        assert "Final-Recipient: rfc822; nobody@c.test" in text
        assert "carol@c.test" not in text and "erin@c.test" not in text
        assert "Status: 5.1.1" in text and "Remote-MTA: dns; mx.c.test" in text
        assert "host mx.c.test [127.0.0.3] said: 550 5.1.1" in text
        _queue_empty(a)


# --- 9. alias targets that cannot be sent -----------------------------------------------------
def test_unsendable_alias_targets_fail_permanently(tmp_path: Path, dns: FakeDNS) -> None:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    peer = Peer("127.0.0.3", port)
    a = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test")
    a.add_user("alice@a.test")
    a.cli("alias", "add", "team@a.test", "carol@c.test")
    # The CLI refuses such targets; a database edited by hand (or by an older version) need not.
    # One is not ASCII (needs SMTPUTF8, which we never use), one would inject a second command.
    with sqlite3.connect(a.data / "users.db") as db:
        db.executemany("INSERT INTO aliases (address, position, target) VALUES (?, ?, ?)",
                       [("team@a.test", 1, "jörg@c.test"),
                        ("team@a.test", 2, "evil\r\nRSET@c.test")])
    db.close()
    with peer, a:
        msgid = _send(a, "alice@a.test", ["team@a.test"], "to the team")
        ok = a.wait_line(OUT, "***", "<carol@c.test>", "OK", msgid)
        session = _session_of(a, ok)
        failed = [x for x in session if "*** " in x and " FAILED " in x]
        assert len(failed) == 2
        assert any("<jörg@c.test>" in x for x in failed)  # printable: kept as it is
        assert any("<evil\\x0d\\x0aRSET@c.test>" in x for x in failed)
        assert not any(x.startswith("RSET") for x in a.log_text().splitlines())
        # only the good address reached the wire
        assert peer.rcpts_seen == 1 and peer.recipients() == ["carol@c.test"]
        [path] = a.wait_messages("alice@a.test", 1)
        _, text = _dsn(path)
        assert text.count("Action: failed") == 2 and "Status: 5.1.3" in text
        assert "553 5.1.3 recipient address cannot be sent" in text
        _queue_empty(a)
        assert f"DEFERRED {msgid}" not in a.log_text()  # failed at once, never retried
