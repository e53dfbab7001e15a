"""The test helpers in tests/support/postfix.py: a private Postfix and smtp-sink really work."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.postfix import (
    PostfixInstance,
    SmtpSink,
    free_port,
    postfix_unavailable,
    smtp_sink_unavailable,
    wait_for_maildir,
)

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(120)]


def _message(subject: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@bench.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\n")
    return msg


def test_private_postfix_delivers_to_maildir(tmp_path: Path) -> None:
    reason = postfix_unavailable()
    if reason:
        pytest.skip(reason)
    postfix = PostfixInstance(root=tmp_path / "postfix", port=free_port(), domain="bench.test")
    with postfix:
        assert postfix.processes(), "no process carries this instance's MAIL_CONFIG"
        with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as client:
            refused = client.send_message(
                _message("hello maildir", postfix.address()),
                from_addr="sender@bench.test",
                to_addrs=[postfix.address()],
            )
        assert refused == {}
        [delivered] = wait_for_maildir(postfix.maildir(), 1, timeout=30)
        text = delivered.read_text()
        assert "Subject: hello maildir" in text
        assert "body of hello maildir" in text
        assert "Delivered-To: user@bench.test" in text
        # An unknown mailbox is refused at RCPT time, so nothing is queued for it.
        with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as client:
            code, _ = client.docmd("MAIL", "FROM:<sender@bench.test>")
            assert code == 250
            code, _ = client.docmd("RCPT", "TO:<nobody-here@bench.test>")
            assert code == 550
    assert postfix.processes() == []
    # The system's Postfix configuration was not used: everything is under the instance root.
    assert (postfix.config_dir / "main.cf").read_text().count(str(postfix.root)) >= 4
    assert "daemon started" in postfix.maillog.read_text()


def test_smtp_sink_receives_a_message(tmp_path: Path) -> None:
    reason = smtp_sink_unavailable()
    if reason:
        pytest.skip(reason)
    sink = SmtpSink(port=free_port(), dump_dir=tmp_path / "sink")
    with sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as client:
            code, banner = client.ehlo("client.bench.test")
            assert code == 250
            assert b"sink.bench.test" in banner
            refused = client.send_message(
                _message("hello sink", "someone@far.test"),
                from_addr="sender@bench.test",
                to_addrs=["someone@far.test"],
            )
        assert refused == {}
        [dump] = sink.wait_for_messages(1, timeout=10)
        text = dump.read_text()
        assert "X-Mail-Args: <sender@bench.test>" in text
        assert "X-Rcpt-Args: <someone@far.test>" in text
        assert "Subject: hello sink" in text
        assert "body of hello sink" in text
