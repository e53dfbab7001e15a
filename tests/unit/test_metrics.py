"""Metrics on their own: label sets, rejection reasons from the reply catalogue, state computed at
scrape time, and message-ID times (the queue age comes from them)."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from mailferry import reply
from mailferry.ids import MessageIdFactory, message_time
from mailferry.metrics import (
    REJECTION_REASONS,
    SESSION_OUTCOMES,
    Metrics,
    rejection_reason,
)
from mailferry.reply import Reply


def _samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = m.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _get(m: Metrics, name: str, **labels: str) -> float | None:
    return _samples(m).get((name, frozenset(labels.items())))


def _catalogue() -> list[tuple[str, Reply]]:
    return [(name, value) for name, value in vars(reply).items() if isinstance(value, Reply)]


def test_every_refusal_in_the_catalogue_has_a_named_reason() -> None:
    refusals = [(name, r) for name, r in _catalogue() if r.code >= 400 and r.code != 421]
    assert len(refusals) > 20
    for name, r in refusals:
        assert rejection_reason(r) in REJECTION_REASONS, name
        assert rejection_reason(r) != "other", name


def test_reasons_of_the_main_refusals() -> None:
    assert rejection_reason(reply.NO_SUCH_USER) == "unknown_user"
    assert rejection_reason(reply.RELAY_DENIED) == "relay_denied"
    assert rejection_reason(reply.SENDER_DOMAIN_UNKNOWN) == "sender_domain"
    assert rejection_reason(reply.SENDER_DOMAIN_TEMPFAIL) == "sender_domain"
    assert rejection_reason(reply.CLIENT_RDNS_REJECT) == "client_rdns"
    assert rejection_reason(reply.MESSAGE_TOO_BIG) == "size"
    assert rejection_reason(reply.BARE_NEWLINE_DATA) == "content"
    assert rejection_reason(reply.TOO_MANY_RECIPIENTS) == "limits"
    assert rejection_reason(reply.UNKNOWN_COMMAND) == "syntax"
    assert rejection_reason(reply.NEED_HELO) == "syntax"
    assert rejection_reason(reply.BAD_RCPT_SYNTAX) == "syntax"
    assert rejection_reason(reply.LOCAL_ERROR) == "local_error"
    assert rejection_reason(reply.r(535, "5.7.8", "Authentication credentials invalid")) == "auth"
    assert rejection_reason(reply.r(554, "5.7.9", "something new")) == "other"
    # Replies that share an enhanced code are told apart (5.7.1: relay, sender, block).
    assert rejection_reason(reply.SENDER_NOT_OWNED) == "sender_not_owned"
    assert rejection_reason(reply.client_blocked("RELAY")) == "blocked"
    assert rejection_reason(reply.AUTH_NEEDS_TLS) == "auth"
    assert rejection_reason(reply.MESSAGE_RATE) == "rate_limit"
    assert rejection_reason(reply.PREGREET) == "pregreet"


def test_positive_replies_and_session_ends_are_not_rejections() -> None:
    for name, r in _catalogue():
        if r.code < 400 or r.code == 421:
            assert rejection_reason(r) is None, name
    m = Metrics(process=False)
    m.rejected(reply.IDLE_TIMEOUT)
    m.rejected(reply.OK)
    assert sum(_get(m, "mailferry_rejections_total", reason=r) for r in REJECTION_REASONS) == 0


def test_every_label_series_starts_at_zero() -> None:
    m = Metrics(["smtp", "submission"], process=False)
    for listener in ("smtp", "submission"):
        for outcome in SESSION_OUTCOMES:
            assert _get(m, "mailferry_sessions_total", listener=listener, outcome=outcome) == 0
        assert _get(m, "mailferry_messages_received_total", listener=listener) == 0
    for reason in REJECTION_REASONS:
        assert _get(m, "mailferry_rejections_total", reason=reason) == 0
    assert _get(m, "mailferry_deliveries_total", channel="remote", result="deferred") == 0
    assert _get(m, "mailferry_dns_lookups_total", type="PTR", result="tempfail") == 0


def test_counts_go_to_their_own_series() -> None:
    m = Metrics(process=False)
    m.session_ended("smtp", "accepted_mail")
    m.session_ended("smtps", "no_mail")  # a kind not named at construction still counts
    m.message_received("smtp", 1200)
    m.message_received("smtp", 34)
    m.rejected(reply.NO_SUCH_USER)
    m.rejected(reply.NO_SUCH_USER)
    m.delivered("local", received_at=100.0, now=100.05)
    m.delivered("remote", received_at=100.0, now=100.0 + 7200)
    m.deferred("remote", 3)
    m.failed("remote")
    m.bounce("failure")
    m.dns_lookup("MX", "nxdomain")
    m.tls_session("outbound", "TLSv1.3")
    m.tls_session("inbound", "?")
    m.tls_failure("outbound")
    m.blocked("rate")
    s = _samples(m)

    def get(name: str, **labels: str) -> float | None:
        return s.get((name, frozenset(labels.items())))

    assert get("mailferry_sessions_total", listener="smtp", outcome="accepted_mail") == 1
    assert get("mailferry_sessions_total", listener="smtps", outcome="no_mail") == 1
    assert get("mailferry_messages_received_total", listener="smtp") == 2
    assert get("mailferry_received_bytes_total", listener="smtp") == 1234
    assert get("mailferry_rejections_total", reason="unknown_user") == 2
    assert get("mailferry_deliveries_total", channel="local", result="delivered") == 1
    assert get("mailferry_deliveries_total", channel="remote", result="deferred") == 3
    assert get("mailferry_deliveries_total", channel="remote", result="failed") == 1
    assert get("mailferry_delivery_latency_seconds_bucket", channel="local", le="0.1") == 1
    assert get("mailferry_delivery_latency_seconds_bucket", channel="remote", le="3600.0") == 0
    assert get("mailferry_delivery_latency_seconds_bucket", channel="remote", le="14400.0") == 1
    assert get("mailferry_delivery_latency_seconds_sum", channel="remote") == 7200
    assert get("mailferry_bounces_total", kind="failure") == 1
    assert get("mailferry_dns_lookups_total", type="MX", result="nxdomain") == 1
    assert get("mailferry_tls_sessions_total", direction="outbound", version="TLSv1.3") == 1
    assert get("mailferry_tls_sessions_total", direction="inbound", version="unknown") == 1
    assert get("mailferry_tls_failures_total", direction="outbound") == 1
    assert get("mailferry_blocks_total", reason="rate") == 1


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    assert a.registry is not b.registry and a.registry is not REGISTRY
    a.message_received("smtp", 10)
    assert _get(a, "mailferry_messages_received_total", listener="smtp") == 1
    assert _get(b, "mailferry_messages_received_total", listener="smtp") == 0


def test_state_is_read_from_the_callbacks_at_each_scrape() -> None:
    m = Metrics(["smtp", "submission"], process=False)
    assert _get(m, "mailferry_queue_messages", state="local") is None  # nothing watched yet
    ids = MessageIdFactory()
    now = time.time()
    old, newer = ids.new(now - 7200), ids.new(now - 60)
    queue = [(newer, "local"), (old, "remote_waiting"), (newer, "remote_active")]
    sessions = ["smtp", "smtp", "submission"]
    m.watch_queue(lambda: queue)
    m.watch_sessions(lambda: sessions)
    s = _samples(m)
    assert s[("mailferry_queue_messages", frozenset({("state", "local")}))] == 1
    assert s[("mailferry_queue_messages", frozenset({("state", "remote_waiting")}))] == 1
    # The same message seen in two places (moving between runners) counts once.
    assert s[("mailferry_queue_messages", frozenset({("state", "remote_active")}))] == 0
    age = s[("mailferry_queue_oldest_message_age_seconds", frozenset())]
    assert 7200 <= age < 7200 + 60
    assert s[("mailferry_sessions_open", frozenset({("listener", "smtp")}))] == 2
    assert s[("mailferry_sessions_open", frozenset({("listener", "submission")}))] == 1
    queue.clear()
    sessions.clear()
    assert _get(m, "mailferry_queue_oldest_message_age_seconds") == 0
    assert _get(m, "mailferry_queue_messages", state="remote_waiting") == 0
    assert _get(m, "mailferry_sessions_open", listener="smtp") == 0


def test_every_metric_is_named_and_documented() -> None:
    m = Metrics()
    text = m.render().decode()
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    assert {"mailferry_sessions", "mailferry_delivery_latency_seconds",
            "process_cpu_seconds"} <= names
    for family in families:
        assert family.name.startswith(("mailferry_", "process_", "python_")), family.name
        assert family.documentation, family.name


@given(st.integers(min_value=400, max_value=599),
       st.from_regex(r"\A[45]\.[0-9]{1,3}\.[0-9]{1,3}\Z") | st.just(""))
def test_any_refusal_gets_a_reason_from_the_fixed_set(code: int, enhanced: str) -> None:
    reason = rejection_reason(Reply(code, enhanced, "text"))
    assert reason is None if code == 421 else reason in REJECTION_REASONS


@given(st.floats(min_value=1_704_067_200, max_value=2_700_000_000))
def test_message_time_reads_back_the_second_an_id_was_made(now: float) -> None:
    assert message_time(MessageIdFactory().new(now)) == float(int(now))


@given(st.text(max_size=14))
def test_message_time_of_anything_else_is_none_or_a_time(text: str) -> None:
    value = message_time(text)
    if not (len(text) == 12 and text.startswith("MF")):
        assert value is None
    else:
        assert value is None or value >= 1_704_067_200
