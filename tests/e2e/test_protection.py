"""Intrusion prevention against the real daemon: every attack gets its block, with its reason code.

Clients come from distinct loopback addresses (127.0.0.x, Dialog's ``source=``) so that the
counters of one test never touch another's. ``[relay] networks`` is narrowed to 127.0.0.1 (the
address the test harness uses to see that the server is up) and 127.0.0.9 (the trusted client of
the exemption test): everyone else is an untrusted stranger.
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, TlsFiles
from tests.support.dialog import Dialog

TRUSTED = "127.0.0.9"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("guard"), overrides={
        "relay": {"networks": ["127.0.0.1/32", f"{TRUSTED}/32"]},
        "limits": {"message_size": 10_000},
        "protection": {"max_relay_attempts": 3, "max_unknown_recipients": 3, "max_rsets": 3,
                       "max_oversize": 2, "max_connections_per_minute": 4},
    })
    daemon.add_user("alice@example.test")
    with daemon:
        yield daemon


def hello(daemon: Daemon, source: str) -> Dialog:
    d = Dialog(daemon.host, daemon.port, source=source)
    assert d.banner[0] == 220, d.banner
    assert d.code("EHLO client.test") == 250
    return d


def assert_tripped(d: Dialog, reason: str) -> None:
    """After the command that tripped the rule: 421 naming the reason, then the server closes."""
    assert d.reply() == (421, [f"4.7.0 Your address is now blocked ({reason}), closing connection"])
    assert d.closed()


def assert_refused_at_connect(daemon: Daemon, source: str, reason: str) -> None:
    with Dialog(daemon.host, daemon.port, source=source) as d:
        assert d.banner == (554, [f"5.7.1 Access denied: your address is blocked ({reason})"])
        assert d.closed()
    daemon.wait_line(f"Refused: {source} is blocked until", f": {reason} (")


def test_relay_attempts_block(guarded: Daemon) -> None:
    src = "127.0.0.21"
    with hello(guarded, src) as d:
        assert d.code("MAIL FROM:<spammer@remote.test>") == 250
        assert d.cmd("RCPT TO:<victim1@elsewhere.test>")[0] == 554
        assert d.cmd("RCPT TO:<victim2@elsewhere.test>")[0] == 554
        assert d.cmd("RCPT TO:<victim3@elsewhere.test>") == (554, ["5.7.1 Relay access denied"])
        assert_tripped(d, "RELAY")
    guarded.wait_line(f"Blocked {src} for 3600 s: RELAY (3 relay attempts in 600 s)")
    assert_refused_at_connect(guarded, src, "RELAY")
    with hello(guarded, "127.0.0.121") as other:  # another address is not affected
        assert other.code("QUIT") == 221


def test_unknown_recipients_block(guarded: Daemon) -> None:
    src = "127.0.0.22"
    with hello(guarded, src) as d:
        assert d.code("MAIL FROM:<harvester@remote.test>") == 250
        assert d.code("RCPT TO:<alice@example.test>") == 250  # a real user does not count
        for name in ("admin", "info"):
            assert d.code(f"RCPT TO:<{name}@example.test>") == 550
        assert d.cmd("RCPT TO:<sales@example.test>")[0] == 550
        assert_tripped(d, "UNKNOWNRCPT")
    guarded.wait_line(f"Blocked {src} for 3600 s: UNKNOWNRCPT (3 unknown recipients in 600 s)")
    assert_refused_at_connect(guarded, src, "UNKNOWNRCPT")


def test_rsets_block(guarded: Daemon) -> None:
    src = "127.0.0.23"
    with hello(guarded, src) as d:
        assert d.code("RSET") == 250
        assert d.code("RSET") == 250
        assert d.cmd("RSET") == (250, ["2.0.0 Reset state"])
        assert_tripped(d, "RSET")
    guarded.wait_line(f"Blocked {src} for 3600 s: RSET (3 RSET commands in 600 s)")
    assert_refused_at_connect(guarded, src, "RSET")


def test_oversize_messages_block_by_size_and_at_end_of_data(guarded: Daemon) -> None:
    src = "127.0.0.24"
    with hello(guarded, src) as d:
        assert d.code("MAIL FROM:<big@remote.test> SIZE=50000") == 552  # announced too big
        assert d.code("MAIL FROM:<big@remote.test>") == 250
        assert d.code("RCPT TO:<alice@example.test>") == 250
        assert d.code("DATA") == 354
        d.send(b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 200 + b".\r\n")  # 16 kB
        assert d.reply()[0] == 552  # found too big at the end of data
        assert_tripped(d, "OVERSIZE")
    guarded.wait_line(f"Blocked {src} for 3600 s: OVERSIZE (2 oversize messages in 600 s)")
    assert_refused_at_connect(guarded, src, "OVERSIZE")
    assert guarded.messages("alice@example.test") == []


def test_connection_rate_block(guarded: Daemon) -> None:
    src = "127.0.0.25"
    for _ in range(3):
        with Dialog(guarded.host, guarded.port, source=src) as d:
            assert d.banner[0] == 220
    with Dialog(guarded.host, guarded.port, source=src) as d:
        assert d.banner == (421, ["4.7.0 Your address is now blocked (CONNRATE), closing"
                                  " connection"])
        assert d.closed()
    guarded.wait_line(f"Blocked {src} for 3600 s: CONNRATE (4 connections in 60 s)")
    assert_refused_at_connect(guarded, src, "CONNRATE")


def test_trusted_networks_are_never_counted(guarded: Daemon) -> None:
    with hello(guarded, TRUSTED) as d:
        assert d.code("MAIL FROM:<app@example.test>") == 250
        for i in range(10):
            assert d.code(f"RCPT TO:<nobody{i}@example.test>") == 550
            assert d.code("RSET") == 250
            assert d.code("MAIL FROM:<app@example.test>") == 250
        assert d.code("NOOP") == 250  # still served
    for _ in range(6):  # more than max_connections_per_minute
        with Dialog(guarded.host, guarded.port, source=TRUSTED) as d:
            assert d.banner[0] == 220
    assert f"Blocked {TRUSTED}" not in guarded.log_text()


def test_report_counts_refusals_by_reason_code(guarded: Daemon) -> None:
    """The tracker reads the new lines (none unparsed) and `mailferry report` shows blocked
    connections as rejected, under their reason code."""
    src = "127.0.0.26"
    with hello(guarded, src) as d:
        assert d.code("MAIL FROM:<x@remote.test>") == 250
        for i in range(2):
            assert d.code(f"RCPT TO:<v{i}@elsewhere.test>") == 554
        assert d.cmd("RCPT TO:<v9@elsewhere.test>")[0] == 554
        assert_tripped(d, "RELAY")
    assert_refused_at_connect(guarded, src, "RELAY")
    time.sleep(0.7)  # the transaction log is flushed every 0.5 s
    report = json.loads(guarded.cli("report", "--json", str(guarded.log_dir)).stdout)
    assert report["log"]["unparsed"] == 0
    reasons = json.dumps(report["rejection_reasons"])
    for code in ("RELAY", "UNKNOWNRCPT", "RSET", "OVERSIZE", "CONNRATE"):
        assert f"554 5.7.1 Access denied: your address is blocked ({code})" in reasons, code
    assert report["totals"]["connections_rejected"] >= 5
    trace = guarded.cli("trace", "--json", "--ip", src, str(guarded.log_dir)).stdout
    records = [json.loads(line) for line in trace.splitlines()]
    # The session in which it tripped: its transaction, and the 421 that ended the session.
    (tripped,) = [r for r in records if r["type"] == "message"]
    assert tripped["status"] == "rejected"
    assert tripped["session"]["rejected"] == (
        "421 4.7.0 Your address is now blocked (RELAY), closing connection")
    assert any(n["text"] == f"Blocked {src} for 3600 s: RELAY (3 relay attempts in 600 s)"
               for n in tripped["session"]["notes"])
    # The connection refused afterwards: a session record, rejected, with the reason code.
    (refused,) = [r for r in records if r["type"] == "session"]
    assert refused["status"] == "rejected"
    assert refused["reason"] == "554 5.7.1 Access denied: your address is blocked (RELAY)"
    assert refused["session"]["notes"][0]["text"].startswith(f"Refused: {src} is blocked until")


@pytest.fixture
def slow_greeter(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path / "pregreet", overrides={
        "relay": {"networks": ["127.0.0.1/32"]},
        "protection": {"greeting_delay": 1.0},
    })
    with daemon:
        yield daemon


def test_pregreet_is_refused_and_blocked(slow_greeter: Daemon) -> None:
    src = "127.0.0.41"
    with Dialog(slow_greeter.host, slow_greeter.port, source=src, wait_banner=False) as d:
        d.send(b"EHLO bot.test\r\n")
        assert d.reply() == (554, ["5.5.1 Protocol error: client talked before the greeting"])
        assert d.closed()
    line = slow_greeter.wait_line("Refused: pregreet:")
    assert "before the greeting: EHLO bot.test" in line
    slow_greeter.wait_line(f"Blocked {src} for 3600 s: PREGREET (1 pregreet in 600 s)")
    assert_refused_at_connect(slow_greeter, src, "PREGREET")
    # A client that waits for the banner is served (after the delay) ...
    with hello(slow_greeter, "127.0.0.42") as d:
        assert d.code("QUIT") == 221
    # ... and a trusted client is greeted at once: it may talk first without harm.
    with Dialog(slow_greeter.host, slow_greeter.port, wait_banner=False) as d:
        d.send(b"EHLO app.test\r\n")
        assert d.reply()[0] == 220
        assert d.reply()[0] == 250
    assert "Blocked 127.0.0.42" not in slow_greeter.log_text()


def test_blocks_by_cli_and_across_restarts(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "cli", overrides={
        "relay": {"networks": ["127.0.0.1/32"]},
        "protection": {"max_relay_attempts": 2, "block_time": 7200},
    })
    src, manual = "127.0.0.51", "127.0.0.52"
    with daemon:
        # A block made by the server ...
        with hello(daemon, src) as d:
            assert d.code("MAIL FROM:<x@remote.test>") == 250
            assert d.code("RCPT TO:<a@elsewhere.test>") == 554
            assert d.cmd("RCPT TO:<b@elsewhere.test>")[0] == 554
            assert_tripped(d, "RELAY")
        # ... and one by the administrator while it runs: the next connection is refused.
        daemon.cli("block", "add", manual, "--for", "600", "--reason", "seen in abuse report")
        assert refused_eventually(daemon, manual) == (
            554, ["5.7.1 Access denied: your address is blocked (MANUAL)"])
        listed = json.loads(daemon.cli("block", "list", "--json").stdout)
        assert [(b["ip"], b["reason"]) for b in listed] == [(src, "RELAY"), (manual, "MANUAL")]
        assert listed[0]["detail"] == "2 relay attempts in 600 s"
        assert listed[1]["detail"] == "seen in abuse report"
        assert 599 <= listed[1]["expires_unix"] - listed[1]["created_unix"] <= 600
        assert 7199 <= listed[0]["expires_unix"] - listed[0]["created_unix"] <= 7200
    # Both survive a restart.
    with daemon:
        assert_refused_at_connect(daemon, src, "RELAY")
        assert_refused_at_connect(daemon, manual, "MANUAL")
        text = daemon.cli("block", "list").stdout
        assert f"{src}  RELAY  until " in text and "2 relay attempts in 600 s" in text
        # Removing a block lets the address in again.
        daemon.cli("block", "remove", src)
        assert served_eventually(daemon, src)
        assert [b["ip"] for b in json.loads(daemon.cli("block", "list", "--json").stdout)] == [
            manual]
    # Mistakes are one line and an exit status, never a traceback.
    gone = daemon.cli("block", "remove", src, check=False)
    assert (gone.returncode, gone.stderr) == (1, f"mailferry: error: {src} is not blocked\n")
    bad = daemon.cli("block", "add", "mail.example.test", check=False)
    assert bad.returncode == 2 and "is not an IP address" in bad.stderr
    assert "Traceback" not in bad.stderr
    trusted = daemon.cli("block", "add", "127.0.0.1")
    assert "is in [relay] networks, which are never blocked" in trusted.stderr


def refused_eventually(daemon: Daemon, source: str) -> tuple[int, list[str]]:
    """The server rechecks the block list at most every 0.2 s: poll (bounded) for a refusal."""
    deadline = time.monotonic() + 10
    while True:
        with Dialog(daemon.host, daemon.port, source=source) as d:
            if d.banner[0] != 220 or time.monotonic() > deadline:
                return d.banner
        time.sleep(0.05)


def served_eventually(daemon: Daemon, source: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with Dialog(daemon.host, daemon.port, source=source) as d:
            if d.banner[0] == 220:
                return True
        time.sleep(0.05)
    return False


def test_data_timeout_ends_a_trickling_message(tmp_path: Path) -> None:
    """[limits] data_timeout bounds the whole DATA phase: a client that sends a byte now and
    then (each well within idle_timeout) is cut off, and nothing is queued."""
    daemon = Daemon(tmp_path / "slow", overrides={"limits": {"data_timeout": 1.5,
                                                             "idle_timeout": 30}})
    daemon.add_user("alice@example.test")
    with daemon, hello(daemon, "127.0.0.1") as d:
        assert d.code("MAIL FROM:<slow@remote.test>") == 250
        assert d.code("RCPT TO:<alice@example.test>") == 250
        assert d.code("DATA") == 354
        d.sock.settimeout(0.3)
        got = b""
        for _ in range(40):  # at most 40 bytes, one per 0.3 s: 12 s, far beyond the 1.5 s
            try:
                d.send(b"x")
                got += d.sock.recv(512)
            except TimeoutError:
                continue
            except OSError:
                break
            if b"\r\n" in got:
                break
        assert got.startswith(b"421 4.4.2 "), got
        assert d.closed()
        daemon.wait_line("Connection lost during DATA; message discarded")
        assert daemon.messages("alice@example.test") == []


def test_auth_brute_force_is_blocked(tmp_path: Path) -> None:
    """Password guessing on the submission port: the Nth failed AUTH blocks the address (421
    after the 535), its next connection gets 554 at connect, and the right password from another
    address still works."""
    tls = TlsFiles.make(tmp_path / "tls")
    daemon = Daemon(tmp_path / "d", tls=tls, kinds=("submission",), overrides={
        "relay": {"networks": ["127.0.0.1/32"]},
        "protection": {"max_auth_failures": 3},
    })
    daemon.add_user("alice@example.test", "right horse battery")
    src = "127.0.0.71"
    port = daemon.ports["submission"]
    with daemon:
        c = smtplib.SMTP(daemon.host, port, source_address=(src, 0), timeout=20)
        c.starttls(context=tls.client_context())
        c.ehlo()
        c.user, c.password = "alice@example.test", "wrong"
        for _ in range(3):
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                c.auth("PLAIN", c.auth_plain)
            assert err.value.smtp_code == 535
        # The third failure trips the rule: after its 535 comes 421, and the server closes.
        assert c.getreply() == (421, b"4.7.0 Your address is now blocked (AUTHFAIL), closing"
                                     b" connection")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.getreply()
        c.close()
        daemon.wait_line(f"Blocked {src} for 3600 s: AUTHFAIL (3 failed AUTH attempts in 600 s)")
        with Dialog(daemon.host, port, source=src) as d:
            assert d.banner == (554, ["5.7.1 Access denied: your address is blocked (AUTHFAIL)"])
            assert d.closed()
        with smtplib.SMTP(daemon.host, port, source_address=("127.0.0.72", 0), timeout=20) as c:
            c.starttls(context=tls.client_context())
            c.ehlo()
            assert c.login("alice@example.test", "right horse battery")[0] == 235


# --- authenticated sessions (submission with real STARTTLS + AUTH) -------------------------------


def submitter(tmp_path: Path, protection: dict[str, object]) -> tuple[Daemon, TlsFiles]:
    """A daemon with a submission listener; nobody is in [relay] networks."""
    tls = TlsFiles.make(tmp_path / "tls")
    daemon = Daemon(tmp_path / "d", tls=tls, kinds=("submission",),
                    overrides={"relay": {"networks": []}, "protection": protection})
    daemon.add_user("alice@example.test", "right horse battery")
    daemon.cli("alias", "add", "news@example.test", "alice@example.test")
    return daemon, tls


def logged_in(daemon: Daemon, tls: TlsFiles, source: str, kind: str = "submission"
              ) -> smtplib.SMTP:
    c = smtplib.SMTP(daemon.host, daemon.ports[kind], source_address=(source, 0), timeout=20)
    c.starttls(context=tls.client_context())
    c.ehlo()
    c.login("alice@example.test", "right horse battery")
    return c


def send(c: smtplib.SMTP, sender: str) -> int:
    """One message to alice; the code of MAIL FROM when refused, else of the end of data."""
    code, _ = c.mail(sender)
    if code != 250:
        return code
    assert c.rcpt("alice@example.test")[0] == 250
    return c.data(b"Subject: hi\r\n\r\nhello\r\n")[0]


def test_messages_per_user_are_limited_with_450_not_blocked(tmp_path: Path) -> None:
    daemon, tls = submitter(tmp_path, {"max_messages_per_user": 3})
    with daemon:
        c = logged_in(daemon, tls, "127.0.0.63")
        codes = [send(c, "alice@example.test") for _ in range(2)]
        codes += [send(c, "news@example.test") for _ in range(2)]  # same user, other address
        assert codes == [250, 250, 250, 450]
        assert c.noop()[0] == 250  # refused for now; the session goes on
        c.quit()
        daemon.wait_line(">>> 450 4.7.1 Too many messages from you, try again later")
        daemon.wait_line("Message rate limit: user alice@example.test sent 3 messages in 600 s"
                         " - try again later")
    assert "Blocked" not in daemon.log_text()


def test_messages_per_sender_are_limited_on_submission(tmp_path: Path) -> None:
    daemon, tls = submitter(tmp_path, {"max_messages_per_sender": 2})
    with daemon:
        c = logged_in(daemon, tls, "127.0.0.64")
        codes = [send(c, "news@example.test") for _ in range(3)]
        codes.append(send(c, "alice@example.test"))  # counted per sender address
        assert codes == [250, 250, 450, 250]
        c.quit()
        # Port 25 is not limited per sender: it is where other servers deliver to us.
        plain = smtplib.SMTP(daemon.host, daemon.port, source_address=("127.0.0.66", 0),
                             timeout=20)
        plain.ehlo()
        assert [send(plain, "news@example.test") for _ in range(3)] == [250, 250, 250]
        plain.quit()
        daemon.wait_line("Message rate limit: sender news@example.test sent 2 messages in 600 s")


def test_authenticated_sessions_are_not_counted_for_rcpt_and_rset(tmp_path: Path) -> None:
    daemon, tls = submitter(tmp_path, {"max_unknown_recipients": 2, "max_rsets": 2,
                                       "max_relay_attempts": 2})
    with daemon:
        c = logged_in(daemon, tls, "127.0.0.65")
        for i in range(4):
            assert c.mail("alice@example.test")[0] == 250
            assert c.rcpt(f"nobody{i}@example.test")[0] == 550
            assert c.rset()[0] == 250
        assert send(c, "alice@example.test") == 250
        c.quit()
    assert "Blocked" not in daemon.log_text()
