"""Receiving mail end to end: real clients (smtplib, swaks) against a real `mailferry serve`."""

from __future__ import annotations

import email
import shutil
import smtplib
import subprocess

import pytest

from mailferry.txlog import format as fmt
from tests.support.daemon import Daemon
from tests.support.dialog import Dialog

MESSAGE = "From: Carol <carol@remote.test>\r\nSubject: hello\r\n\r\nfirst line\r\n.dotted\r\n"


def test_smtplib_message_lands_in_maildir_with_trace_headers(server: Daemon) -> None:
    before = len(server.messages("alice@example.test"))
    with smtplib.SMTP(server.host, server.port) as client:
        code, text = client.ehlo("client.remote.test")
        assert code == 250
        assert b"PIPELINING" in text and b"SIZE 100000" in text and b"ENHANCEDSTATUSCODES" in text
        refused = client.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)
        assert refused == {}
    [path] = server.wait_messages("alice@example.test", before + 1)[before:]
    msg = email.message_from_bytes(path.read_bytes())
    assert msg["Return-Path"] == "<carol@remote.test>"
    assert msg["Delivered-To"] == "alice@example.test"
    assert "by mx.example.test (mailferry)" in msg["Received"]
    assert msg.get_payload() == "first line\r\n.dotted\r\n"  # dot-stuffing undone exactly once
    msgid = msg["Received"].split(" id ")[1].split()[0].rstrip(";")
    log = server.wait_log(f"Delivery {msgid}")
    assert "*** <carol@remote.test> <alice@example.test> 1 " in log
    assert f"OK {msgid}" in log
    assert f"Message id {msgid} accepted for delivery" in log


def test_250_reply_carries_message_id_and_size(server: Daemon) -> None:
    with Dialog(server.host, server.port) as d:
        assert d.banner[0] == 220
        assert d.code("EHLO c.test") == 250
        assert d.code("MAIL FROM:<x@remote.test> SIZE=40") == 250
        assert d.code("RCPT TO:<bob@example.test>") == 250
        assert d.code("DATA") == 354
        code, [text] = d.cmd("Subject: s\r\n\r\nbody\r\n.")
        assert code == 250
        assert text.startswith("2.6.0 20 bytes received in 00:00:0")
        msgid = text.split("Message id ")[1].split()[0]
        assert msgid.startswith("MF") and len(msgid) == 12
        assert d.code("QUIT") == 221
    log = server.wait_log(f"Delivery {msgid}")
    # Every line of that session parses back and has the same SID and the client's IP.
    session_lines = [fmt.parse_line(x) for x in log.splitlines() if msgid in x and "***" in x]
    assert session_lines and all(ln is not None and ln.peer == "127.0.0.1" for ln in session_lines)


def test_alias_expands_to_both_mailboxes(server: Daemon) -> None:
    a = len(server.messages("alice@example.test"))
    b = len(server.messages("bob@example.test"))
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("carol@remote.test", ["team@example.test"], MESSAGE)
    server.wait_messages("alice@example.test", a + 1)
    server.wait_messages("bob@example.test", b + 1)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by scripts/setup.sh")
def test_swaks_delivers(server: Daemon) -> None:
    before = len(server.messages("bob@example.test"))
    out = subprocess.run(
        ["swaks", "--server", f"{server.host}:{server.port}", "--from", "dave@remote.test",
         "--to", "bob@example.test", "--helo", "swaks.remote.test", "--header",
         "Subject: via swaks", "--body", "sent by swaks"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  250 2.6.0" in out.stdout
    [path] = server.wait_messages("bob@example.test", before + 1)[before:]
    assert b"sent by swaks" in path.read_bytes()


def test_unknown_local_user_550_and_session_usable(server: Daemon) -> None:
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        assert d.code("MAIL FROM:<x@remote.test>") == 250
        code, [text] = d.cmd("RCPT TO:<nobody@example.test>")
        assert (code, text[:5]) == (550, "5.1.1")
        assert d.code("RCPT TO:<alice@example.test>") == 250
        assert d.code("RSET") == 250
        assert d.code("NOOP") == 250
    assert "recipient check: nobody@example.test does not exist" in server.wait_log("nobody@")


@pytest.mark.parametrize(
    ("line", "code", "enhanced"),
    [
        ("FOO bar", 500, "5.5.2"),
        ("MAIL FROM:<x@remote.test> SIZE=100001", 552, "5.3.4"),
        ("MAIL FROM:<x@remote.test> FOO=1", 555, "5.5.4"),
        ("MAIL FROM:x@remote.test", 501, "5.5.4"),
        ("MAIL FROM:<not an address>", 501, "5.1.7"),
        ("RCPT TO:<alice@example.test>", 503, "5.5.1"),
        ("DATA", 503, "5.5.1"),
        ("VRFY alice@example.test", 252, "2.5.2"),
        ("EXPN team@example.test", 502, "5.5.1"),
        ("HELP", 214, "2.0.0"),
        ("QUIT now", 501, "5.5.4"),
        ("MAIL FROM:<caf\xe9@remote.test>", 500, "5.5.2"),
    ],
)
def test_reply_codes_and_session_stays_usable(server: Daemon, line: str, code: int,
                                              enhanced: str) -> None:
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        got, texts = d.cmd(line.encode("latin-1"))
        assert got == code
        assert texts[0].startswith(enhanced)
        assert d.code("NOOP") == 250  # still usable


def test_sequence_errors_before_ehlo(server: Daemon) -> None:
    with Dialog(server.host, server.port) as d:
        assert d.cmd("MAIL FROM:<x@remote.test>")[0] == 503
        assert d.cmd("EHLO")[0] == 501
        assert d.code("HELO c.test") == 250
        # HELO offered no extensions: SIZE is an unknown parameter now (RFC 1869 §6)
        assert d.code("MAIL FROM:<x@remote.test> SIZE=10") == 555
        assert d.code("MAIL FROM:<x@remote.test>") == 250
        assert d.code("MAIL FROM:<x@remote.test>") == 503


def test_too_many_recipients_452(server: Daemon) -> None:
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        d.cmd("MAIL FROM:<x@remote.test>")
        for _ in range(5):
            assert d.code("RCPT TO:<alice@example.test>") == 250
        code, [text] = d.cmd("RCPT TO:<bob@example.test>")
        assert (code, text[:5]) == (452, "4.5.3")


def test_message_too_big_552_then_usable(server: Daemon) -> None:
    before = len(server.messages("alice@example.test"))
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        d.cmd("MAIL FROM:<x@remote.test>")
        d.cmd("RCPT TO:<alice@example.test>")
        assert d.code("DATA") == 354
        d.send(("x" * 99 + "\r\n") * 1500)  # 150 kB > 100 kB limit
        code, [text] = d.cmd(".")
        assert (code, text[:5]) == (552, "5.3.4")
        # the session goes on: a small message right after is accepted
        assert d.code("MAIL FROM:<x@remote.test>") == 250
        assert d.code("RCPT TO:<alice@example.test>") == 250
        assert d.code("DATA") == 354
        assert d.cmd("Subject: small\r\n\r\nok\r\n.")[0] == 250
    found = server.wait_messages("alice@example.test", before + 1)
    assert len(found) == before + 1
    assert b"Subject: small" in found[-1].read_bytes()


def test_long_command_line_500_and_tail_not_executed(server: Daemon) -> None:
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        code, [text] = d.cmd("NOOP " + "x" * 3000 + " QUIT")
        assert (code, text[:5]) == (500, "5.5.6")
        assert d.code("NOOP") == 250


def test_long_text_line_refused_never_split(server: Daemon) -> None:
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        d.cmd("MAIL FROM:<x@remote.test>")
        d.cmd("RCPT TO:<alice@example.test>")
        d.cmd("DATA")
        code, [text] = d.cmd("Subject: s\r\n\r\n" + "y" * 1200 + "\r\n.")
        assert (code, text[:5]) == (550, "5.6.0")
        assert d.code("NOOP") == 250


def test_idle_timeout_is_per_command_not_per_byte(server: Daemon) -> None:
    """A client trickling one byte at a time never completes a command: it is still cut off."""
    import time

    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        start = time.monotonic()
        closed = False
        for ch in "NOOP" * 10:  # bounded: 40 bytes, 0.25 s apart = 10 s at most
            try:
                d.send(ch)
            except OSError:
                closed = True
                break
            if d.closed(timeout=0.25):
                closed = True
                break
        assert closed
        assert time.monotonic() - start < 8  # idle_timeout is 3 s in this fixture
        assert b"421 4.4.2" in d.buf
