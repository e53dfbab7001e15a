"""/metrics over HTTP from the running daemon: what submission with TLS, AUTH and intrusion
prevention add (the rest of the metrics: test_metrics_scrape.py, in-process)."""

from __future__ import annotations

import smtplib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, TlsFiles
from tests.support.dialog import Dialog


def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(daemon.http_url + "metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_inbound_tls_auth_sessions_and_blocks(tmp_path: Path) -> None:
    tls = TlsFiles.make(tmp_path / "tls")
    daemon = Daemon(tmp_path / "d", tls=tls, kinds=("submission",), http=True, overrides={
        "relay": {"networks": []}, "protection": {"max_relay_attempts": 1}})
    daemon.add_user("alice@example.test", "right horse battery")
    with daemon:
        for _ in range(2):
            with smtplib.SMTP(daemon.host, daemon.ports["submission"], timeout=20) as c:
                c.starttls(context=tls.client_context())
                c.login("alice@example.test", "right horse battery")
                c.sendmail("alice@example.test", ["alice@example.test"],
                           b"Subject: hi\r\n\r\nhello\r\n")
        with Dialog(daemon.host, daemon.port, source="127.0.0.81") as d:
            assert d.code("EHLO client.test") == 250
            assert d.code("MAIL FROM:<x@remote.test>") == 250
            assert d.code("RCPT TO:<victim@elsewhere.test>") == 554  # and blocked: 421 follows
        daemon.wait_line("Blocked 127.0.0.81 for 3600 s: RELAY")
        m = scrape(daemon)
        report = httpx.get(daemon.http_url + "api/report", timeout=10).json()
        page = httpx.get(daemon.http_url + "report", timeout=10).text
    # The report (API and page) counts the same sessions from the transaction log.
    assert report["totals"]["messages_tls"] == 2
    assert report["totals"]["messages_authenticated"] == 2
    assert report["top_authenticated_users"] == [{"name": "alice@example.test", "count": 2}]
    assert "Top authenticated users" in page and "over TLS" in page
    inbound = {labels: v for (name, labels), v in m.items()
               if name == "mailferry_tls_sessions_total" and ("direction", "inbound") in labels}
    assert inbound == {(("direction", "inbound"), ("version", "TLSv1.3")): 2.0}
    assert m[("mailferry_blocks_total", (("reason", "RELAY"),))] == 1.0
    assert m[("mailferry_messages_received_total", (("listener", "submission"),))] == 2.0
    assert m[("mailferry_sessions_total",
              (("listener", "submission"), ("outcome", "accepted_mail")))] == 2.0
    assert m[("mailferry_rejections_total", (("reason", "relay_denied"),))] == 1.0
