"""The seed document's checks, end to end: a real server asks a real DNS server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dialog import Dialog
from tests.support.fakedns import FakeDNS


def _daemon(root: Path, dns: FakeDNS, host: str, rdns: str) -> Daemon:
    ip, port = dns.nameserver
    daemon = Daemon(root, host=host, overrides={
        "dns": {"nameservers": [f"{ip}:{port}"], "timeout": 1},
        "policy": {"sender_domain_check": True, "client_rdns": rdns},
    })
    daemon.add_user("alice@example.test")
    return daemon


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDNS]:
    with FakeDNS([Path(__file__).parents[1] / "data" / "zones" / "default.zone"]) as server:
        yield server


@pytest.fixture(scope="module")
def checking(tmp_path_factory: pytest.TempPathFactory, dns: FakeDNS) -> Iterator[Daemon]:
    with _daemon(tmp_path_factory.mktemp("verify"), dns, "127.0.0.1", "log") as daemon:
        yield daemon


@pytest.mark.parametrize(
    ("sender", "code", "enhanced", "evidence"),
    [
        ("a@example.test", 250, "2.1.0", None),  # local domain: no lookup needed
        ("a@multi.test", 250, "2.1.0", "multi.test"),
        ("a@a-only.test", 250, "2.1.0", "a-only.test"),
        ("a@aaaa-only.test", 250, "2.1.0", "aaaa-only.test"),
        ("a@nosuch.test", 550, "5.1.8", "nosuch.test"),
        ("a@txt-only.test", 550, "5.1.8", "txt-only.test"),
        ("a@nullmx.test", 550, "5.1.8", "nullmx.test"),
        ("a@servfail.test", 450, "4.1.8", "servfail.test"),
        ("a@timeout.test", 450, "4.1.8", "timeout.test"),
    ],
)
def test_sender_domain_check(checking: Daemon, sender: str, code: int, enhanced: str,
                             evidence: str | None) -> None:
    with Dialog(checking.host, checking.port) as d:
        d.cmd("EHLO client.test")
        got, [text] = d.cmd(f"MAIL FROM:<{sender}>")
        assert (got, text[:5]) == (code, enhanced)
        if code != 250:
            assert d.code("MAIL FROM:<>") == 250  # the null sender is always allowed
    if evidence:
        checking.wait_line("sender_domain_check:", evidence)


def test_client_rdns_is_logged_and_in_received_header(checking: Daemon) -> None:
    with Dialog(checking.host, checking.port) as d:
        d.cmd("EHLO client.test")
        d.cmd("MAIL FROM:<>")
        d.cmd("RCPT TO:<alice@example.test>")
        d.cmd("DATA")
        assert d.cmd("Subject: rdns\r\n\r\nx\r\n.")[0] == 250
    log = checking.wait_log("client_rdns:")
    line = next(x for x in log.splitlines() if "client_rdns:" in x)
    assert "localhost.example.test" in line
    [path] = checking.wait_messages("alice@example.test", 1)
    assert b"from client.test (localhost.example.test [127.0.0.1])" in path.read_bytes()


def test_client_rdns_reject_mode(tmp_path: Path, dns: FakeDNS) -> None:
    # 127.0.0.5's PTR name resolves to another address: not forward-confirmed → 550 5.7.25.
    with _daemon(tmp_path / "liar", dns, "127.0.0.5", "reject") as daemon, \
            Dialog(daemon.host, daemon.port, source="127.0.0.5") as d:
        d.cmd("EHLO liar.example.test")
        code, [text] = d.cmd("MAIL FROM:<a@multi.test>")
        assert (code, text[:6]) == (550, "5.7.25")
        assert d.code("NOOP") == 250
    assert "liar.example.test" in daemon.wait_log("client_rdns:")
