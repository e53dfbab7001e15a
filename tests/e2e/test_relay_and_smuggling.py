"""No open relay, no SMTP smuggling: attacks through a real socket against a real server."""

from __future__ import annotations

import time

import pytest

from tests.support.daemon import Daemon
from tests.support.dialog import Dialog


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory):
    """A server whose relay networks do NOT include loopback: the test client is a stranger."""
    daemon = Daemon(tmp_path_factory.mktemp("relay"),
                    overrides={"relay": {"networks": ["192.0.2.0/24"]}})
    daemon.add_user("alice@example.test")
    with daemon:
        yield daemon


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim@other.test",  # plain relay attempt
        "victim%other.test@example.test",  # percent hack
        "@example.test:victim@other.test",  # source route
        '"victim@other.test"@example.test',  # quoted local part with @
        "other.test!victim@example.test",  # bang path inside a local address
        "alice@[127.0.0.1]",  # address literal is not a local domain
        "victim@other.test@example.test",  # two @
        "other.test!victim",  # bang path, no domain
        "victim@example.test.other.test",  # look-alike domain
    ],
)
def test_relay_tricks_refused_for_strangers(untrusted: Daemon, rcpt: str) -> None:
    with Dialog(untrusted.host, untrusted.port) as d:
        d.cmd("EHLO stranger.test")
        assert d.code("MAIL FROM:<spammer@remote.test>") == 250
        code, texts = d.cmd(f"RCPT TO:<{rcpt}>")
        assert 500 <= code < 600, (rcpt, code, texts)
        assert d.code("DATA") == 503  # nothing was accepted
        assert d.code("RCPT TO:<alice@example.test>") == 250  # and the session is still fine


def test_plain_relay_gets_554_relay_access_denied(untrusted: Daemon) -> None:
    with Dialog(untrusted.host, untrusted.port) as d:
        d.cmd("EHLO stranger.test")
        d.cmd("MAIL FROM:<spammer@remote.test>")
        code, [text] = d.cmd("RCPT TO:<victim@other.test>")
        assert (code, text) == (554, "5.7.1 Relay access denied")
    assert "is not local and the client is not in [relay] networks" in untrusted.wait_log(
        "relay check")


def test_trusted_network_may_relay(server: Daemon) -> None:
    # The shared fixture keeps the default [relay] networks, which include 127.0.0.0/8.
    with Dialog(server.host, server.port) as d:
        d.cmd("EHLO c.test")
        d.cmd("MAIL FROM:<alice@example.test>")
        code, [text] = d.cmd("RCPT TO:<friend@remote.test>")
        assert code == 250 and text.endswith("Recipient ok; will forward")


def _send_raw_message(d: Dialog, payload: bytes) -> tuple[int, list[str]]:
    d.cmd("EHLO c.test")
    d.cmd("MAIL FROM:<x@remote.test>")
    d.cmd("RCPT TO:<alice@example.test>")
    assert d.code("DATA") == 354
    d.send(payload)
    return d.reply()


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"],
    ids=["LF.LF", "CR.CR", "LF.CRLF", "CRLF.LF", "CR.CRLF"],
)
def test_smuggling_fake_end_of_data_is_not_an_end(untrusted: Daemon, fake_end: bytes) -> None:
    """The smuggled MAIL/RCPT/DATA must never run as commands (CVE-2023-51764 family)."""
    before = len(untrusted.messages("alice@example.test"))
    smuggled = (b"Subject: outer\r\n\r\nhello" + fake_end +
                b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
    with Dialog(untrusted.host, untrusted.port) as d:
        code, [text] = _send_raw_message(d, smuggled)
        # The only end is the real CRLF.CRLF, and the bare CR/LF gets the whole message refused.
        assert (code, text[:5]) == (550, "5.6.0")
        assert d.code("NOOP") == 250  # no pipelined replies from smuggled commands are pending
    time.sleep(0.3)
    assert len(untrusted.messages("alice@example.test")) == before
    assert untrusted.queued() == []


def test_bare_lf_in_command_is_refused(untrusted: Daemon) -> None:
    with Dialog(untrusted.host, untrusted.port) as d:
        d.cmd("EHLO c.test")
        code, [text] = d.cmd(b"MAIL FROM:<a@remote.test>\nRCPT TO:<alice@example.test>")
        assert (code, text[:5]) == (500, "5.5.2")
        assert d.code("RCPT TO:<alice@example.test>") == 503  # the MAIL never happened


def test_nul_in_command_is_refused(untrusted: Daemon) -> None:
    with Dialog(untrusted.host, untrusted.port) as d:
        d.cmd("EHLO c.test")
        assert d.code(b"MAIL FROM:<a@remote.test>\x00") == 500
        assert d.code("NOOP") == 250


def test_disconnect_mid_data_leaves_nothing(untrusted: Daemon) -> None:
    before = len(untrusted.messages("alice@example.test"))
    d = Dialog(untrusted.host, untrusted.port)
    d.cmd("EHLO c.test")
    d.cmd("MAIL FROM:<x@remote.test>")
    d.cmd("RCPT TO:<alice@example.test>")
    d.cmd("DATA")
    d.send(b"Subject: cut\r\n\r\n" + b"z" * 5000 + b"\r\n")
    d.close()
    log = untrusted.wait_log("Connection lost during DATA; message discarded")
    assert "Disconnected" in log.split("Connection lost during DATA")[1]
    assert untrusted.queued() == []
    assert list((untrusted.data / "queue" / "tmp").iterdir()) == []
    assert len(untrusted.messages("alice@example.test")) == before
