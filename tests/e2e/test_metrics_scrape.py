"""Metrics end to end: the real daemon (in this process, to read its Metrics), real SMTP clients
over loopback sockets, a real DNS server and a real foreign SMTP peer; every figure is read back
from the Prometheus text exposition (what /metrics serves) and compared with what was sent."""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
from pathlib import Path

import trustme

from mailferry.config import load_config
from tests.support.daemon import Daemon, free_port
from tests.support.fakedns import FakeDNS
from tests.support.inprocess import InProcessDaemon
from tests.support.smtp_peer import Peer, tls_context, write_ca


def _send(host: str, port: int, sender: str, rcpts: list[str], body: str) -> int:
    """One message in one session; the size the server says it received."""
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("client.example.test")
        client.mail(sender)
        for rcpt in rcpts:
            code, _ = client.rcpt(rcpt)
            assert code == 250, rcpt
        code, text = client.data(f"Subject: metrics\r\n\r\n{body}\r\n".encode())
        assert code == 250, text
    return int(re.search(rb"(\d+) bytes received", text).group(1))


def _refusals(host: str, port: int) -> list[int]:
    """One session of refused commands, ended with QUIT: the codes the server replied."""
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("client.example.test")
        codes = [client.docmd("FROB")[0]]  # unknown command
        codes.append(client.mail("alice@example.test", ["SIZE=999999999"])[0])  # over the limit
        codes.append(client.mail("alice@example.test")[0])
        codes.append(client.rcpt("nobody@example.test")[0])  # unknown user
        codes.append(client.rcpt("someone@elsewhere.test")[0])  # relay denied
        codes.append(client.docmd("RCPT TO:<a@b")[0])  # bad syntax
    return codes


def test_local_traffic_is_counted_exactly(tmp_path: Path) -> None:
    d = Daemon(tmp_path, overrides={
        "limits": {"idle_timeout": 3, "sessions_per_ip": 2, "message_size": 100_000},
        "relay": {"networks": ["192.0.2.0/24"]},  # loopback may not relay here
    })
    d.add_user("alice@example.test")
    config = load_config(d.config)

    async def scenario() -> None:
        async with InProcessDaemon(config) as mf:
            # Before any traffic every series exists, at zero.
            assert mf.value("mailferry_messages_received_total", listener="smtp") == 0
            assert mf.value("mailferry_sessions_open", listener="smtp") == 0
            assert mf.value("mailferry_queue_messages", state="local") == 0

            sizes = [await asyncio.to_thread(_send, d.host, d.port, "alice@example.test",
                                             ["alice@example.test"], f"message {i}" * (i + 1))
                     for i in range(3)]
            await mf.wait_value("mailferry_deliveries_total", 3, channel="local",
                                result="delivered")
            await mf.wait_value("mailferry_sessions_total", 3, listener="smtp",
                                outcome="accepted_mail")
            assert mf.value("mailferry_messages_received_total", listener="smtp") == 3
            assert mf.value("mailferry_received_bytes_total", listener="smtp") == sum(sizes)
            assert mf.value("mailferry_delivery_latency_seconds_count", channel="local") == 3
            assert mf.value("mailferry_delivery_latency_seconds_bucket", channel="local",
                            le="86400.0") == 3
            assert mf.value("mailferry_deliveries_total", channel="remote",
                            result="delivered") == 0
            assert len(d.messages("alice@example.test")) == 3
            assert mf.value("mailferry_queue_messages", state="local") == 0
            assert mf.value("mailferry_queue_oldest_message_age_seconds") == 0

            codes = await asyncio.to_thread(_refusals, d.host, d.port)
            assert codes == [500, 552, 250, 550, 554, 501], codes
            await mf.wait_value("mailferry_sessions_total", 2, listener="smtp",
                                outcome="no_mail")  # this one and the start-up probe
            for reason, count in (("syntax", 2), ("size", 1), ("unknown_user", 1),
                                  ("relay_denied", 1), ("sender_domain", 0)):
                assert mf.value("mailferry_rejections_total", reason=reason) == count, reason

            # Two idle clients fill the per-address limit: open, then a third is refused,
            # then both time out.
            idle = [await asyncio.to_thread(_connect, d.host, d.port) for _ in range(2)]
            try:
                assert mf.value("mailferry_sessions_open", listener="smtp") == 2
                third = await asyncio.to_thread(_connect, d.host, d.port)
                third.close()
                assert third.banner.startswith(b"421 "), third.banner
                await mf.wait_value("mailferry_sessions_total", 1, listener="smtp",
                                    outcome="refused")
                await mf.wait_value("mailferry_sessions_total", 2, listener="smtp",
                                    outcome="timeout")
                assert mf.value("mailferry_sessions_open", listener="smtp") == 0
            finally:
                for c in idle:
                    c.close()
            # A 421 ends a session: it is an outcome, not a rejection.
            assert mf.value("mailferry_rejections_total", reason="other") == 0
            assert mf.value("mailferry_sessions_total", listener="smtp",
                            outcome="accepted_mail") == 3

            # A client that vanishes in the middle of DATA: an error, and nothing received.
            await asyncio.to_thread(_vanish_during_data, d.host, d.port)
            await mf.wait_value("mailferry_sessions_total", 1, listener="smtp", outcome="error")
            assert mf.value("mailferry_messages_received_total", listener="smtp") == 3

            # A session still open when the server stops is told 421 and counted as shutdown.
            still_open = await asyncio.to_thread(_connect, d.host, d.port)
        try:
            # The daemon has stopped; its Metrics object still answers.
            await mf.wait_value("mailferry_sessions_total", 1, listener="smtp",
                                outcome="shutdown")
            assert mf.value("mailferry_sessions_open", listener="smtp") == 0
            for outcome, count in (("accepted_mail", 3), ("no_mail", 2), ("refused", 1),
                                   ("timeout", 2), ("error", 1), ("shutdown", 1)):
                assert mf.value("mailferry_sessions_total", listener="smtp",
                                outcome=outcome) == count, outcome
        finally:
            still_open.close()

    asyncio.run(scenario())


def _vanish_during_data(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=10) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO client.example.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        for command in (b"MAIL FROM:<alice@example.test>", b"RCPT TO:<alice@example.test>",
                        b"DATA"):
            sock.sendall(command + b"\r\n")
            assert f.readline()[:1] in (b"2", b"3")
        sock.sendall(b"Subject: cut short\r\n\r\nhalf a mess")


class _Client:
    def __init__(self, sock: socket.socket, banner: bytes) -> None:
        self.sock = sock
        self.banner = banner

    def close(self) -> None:
        self.sock.close()


def _connect(host: str, port: int) -> _Client:
    sock = socket.create_connection((host, port), timeout=10)
    return _Client(sock, sock.recv(512))


def test_relay_dns_tls_and_bounces_are_counted(tmp_path: Path) -> None:
    ca = trustme.CA()
    peer_port = free_port("127.0.0.3")
    replies = {"ok@remote.test": "250 2.1.5 OK", "gone@remote.test": "550 5.1.1 no such user",
               "slow@remote.test": "451 4.3.0 try later"}
    peer = Peer("127.0.0.3", peer_port, rcpt_reply=lambda addr, _n: replies[addr],
                tls_context=tls_context(ca, "mx.remote.test"))
    with FakeDNS([Path(__file__).parents[1] / "data" / "zones" / "default.zone"]) as dns, peer:
        dns.add("remote.test", "MX", "10 mx.remote.test")
        dns.add("mx.remote.test", "A", "127.0.0.3")
        ip, dport = dns.nameserver
        d = Daemon(tmp_path, overrides={
            "policy": {"sender_domain_check": True},
            "dns": {"nameservers": [f"{ip}:{dport}"], "timeout": 2},
            "delivery": {"port": peer_port, "connect_timeout": 3, "command_timeout": 10,
                         "tls_ca_file": str(write_ca(ca, tmp_path / "ca.pem"))},
            "queue": {"retry_schedule": [3600], "delay_warning": 0},
        })
        d.add_user("alice@example.test")
        config = load_config(d.config)

        async def scenario() -> None:
            async with InProcessDaemon(config) as mf:
                # A sender domain that does not exist: one MX lookup, NXDOMAIN, 550.
                code = await asyncio.to_thread(_mail_from, d.host, d.port, "x@nosuch.test")
                assert code == 550
                # A sender domain with only an A record: MX (no data), then A and AAAA.
                await asyncio.to_thread(_send, d.host, d.port, "bob@a-only.test",
                                        ["alice@example.test"], "from a-only")
                # Relayed to remote.test (loopback may relay by default): one delivered, one
                # refused for good (a bounce to alice, delivered here), one deferred.
                await asyncio.to_thread(_send, d.host, d.port, "alice@example.test",
                                        list(replies), "relayed")
                await mf.wait_value("mailferry_deliveries_total", 1, channel="remote",
                                    result="deferred")
                await mf.wait_value("mailferry_deliveries_total", 2, channel="local",
                                    result="delivered")
                assert peer.recipients() == ["ok@remote.test"]
                expected = {
                    ("mailferry_deliveries_total", (("channel", "remote"),
                                                    ("result", "delivered"))): 1,
                    ("mailferry_deliveries_total", (("channel", "remote"),
                                                    ("result", "failed"))): 1,
                    ("mailferry_delivery_latency_seconds_count", (("channel", "remote"),)): 1,
                    ("mailferry_bounces_total", (("kind", "failure"),)): 1,
                    ("mailferry_bounces_total", (("kind", "delay"),)): 0,
                    ("mailferry_messages_received_total", (("listener", "smtp"),)): 2,
                    ("mailferry_rejections_total", (("reason", "sender_domain"),)): 1,
                    ("mailferry_tls_sessions_total", (("direction", "outbound"),
                                                      ("version", "TLSv1.3"))): 1,
                    ("mailferry_tls_failures_total", (("direction", "outbound"),)): 0,
                    ("mailferry_dns_lookups_total", (("result", "nxdomain"), ("type", "MX"))): 1,
                    ("mailferry_dns_lookups_total", (("result", "nodata"), ("type", "MX"))): 1,
                    ("mailferry_dns_lookups_total", (("result", "ok"), ("type", "MX"))): 1,
                    ("mailferry_dns_lookups_total", (("result", "ok"), ("type", "A"))): 2,
                    ("mailferry_dns_lookups_total", (("result", "nodata"), ("type", "AAAA"))): 2,
                    ("mailferry_dns_lookups_total", (("result", "tempfail"), ("type", "MX"))): 0,
                    ("mailferry_queue_messages", (("state", "remote_waiting"),)): 1,
                    ("mailferry_queue_messages", (("state", "remote_active"),)): 0,
                    ("mailferry_queue_messages", (("state", "local"),)): 0,
                }
                samples = mf.scrape()
                got = {key: samples.get((key[0], frozenset(key[1]))) for key in expected}
                assert got == expected
                # The deferred message waits in the queue: its age is that of its arrival.
                age = mf.value("mailferry_queue_oldest_message_age_seconds")
                assert age is not None and 0 <= age < 60

        asyncio.run(scenario())


def _mail_from(host: str, port: int, sender: str) -> int:
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("client.example.test")
        return client.mail(sender)[0]
