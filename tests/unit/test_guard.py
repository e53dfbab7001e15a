"""inbound/guard.py: sliding windows, every block reason, exemptions by config, bounded memory.

The clock is injected: time moves by assignment, nothing sleeps.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.config import ProtectionConfig
from mailferry.inbound.guard import Guard, Reason, SlidingWindow, canonical_ip
from mailferry.txlog import format as fmt


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **keys: object) -> Guard:
    return Guard(dataclasses.replace(ProtectionConfig(), **keys), clock=clock)


# Each per-IP reason with the config key of its threshold.
RULES = [
    (Reason.AUTHFAIL, "max_auth_failures", "failed AUTH attempts"),
    (Reason.UNKNOWNRCPT, "max_unknown_recipients", "unknown recipients"),
    (Reason.RELAY, "max_relay_attempts", "relay attempts"),
    (Reason.RSET, "max_rsets", "RSET commands"),
    (Reason.OVERSIZE, "max_oversize", "oversize messages"),
    (Reason.CONNRATE, "max_connections_per_minute", "connections"),
    (Reason.PREGREET, "max_pregreets", "pregreets"),
]


@pytest.mark.parametrize(("reason", "key", "words"), RULES, ids=[r[0].value for r in RULES])
def test_each_reason_blocks_at_its_threshold(reason: Reason, key: str, words: str) -> None:
    clock = Clock()
    g = guard(clock, **{key: 3}, block_time=120.0)
    assert g.count("192.0.2.7", reason) is None
    clock.now += 1
    assert g.count("192.0.2.7", reason) is None
    clock.now += 1
    block = g.count("192.0.2.7", reason)
    assert block is not None
    assert (block.ip, block.reason) == ("192.0.2.7", reason.value)
    assert block.detail.startswith(f"3 {words} in ")
    assert block.created == clock.now and block.expires == clock.now + 120
    assert block.active(clock.now + 119) and not block.active(clock.now + 120)
    # The log line the session writes from it
    line = fmt.blocked(block.ip, block.expires - block.created, block.reason, block.detail)
    assert line == f"Blocked 192.0.2.7 for 120 s: {reason.value} ({block.detail})"


def test_window_is_sliding() -> None:
    clock = Clock()
    g = guard(clock, max_relay_attempts=3, window=600.0)
    g.count("192.0.2.7", Reason.RELAY)  # t=0
    clock.now += 400
    g.count("192.0.2.7", Reason.RELAY)  # t=400
    clock.now += 201
    # t=601: the first one is out of the window; two remain, this makes two, not three
    assert g.count("192.0.2.7", Reason.RELAY) is None
    assert g.count_of("192.0.2.7", Reason.RELAY) == 2
    clock.now += 100
    block = g.count("192.0.2.7", Reason.RELAY)  # t=701: 400, 601, 701 are within 600 s
    assert block is not None and block.detail == "3 relay attempts in 600 s"


def test_connection_rate_counts_over_one_minute_whatever_the_window() -> None:
    clock = Clock()
    g = guard(clock, max_connections_per_minute=2, window=3600.0)
    g.count("192.0.2.7", Reason.CONNRATE)
    clock.now += 61
    assert g.count("192.0.2.7", Reason.CONNRATE) is None
    clock.now += 1
    block = g.count("192.0.2.7", Reason.CONNRATE)
    assert block is not None and block.detail == "2 connections in 60 s"


def test_reasons_and_addresses_count_separately() -> None:
    clock = Clock()
    g = guard(clock, max_relay_attempts=2, max_unknown_recipients=2)
    assert g.count("192.0.2.7", Reason.RELAY) is None
    assert g.count("192.0.2.7", Reason.UNKNOWNRCPT) is None
    assert g.count("192.0.2.8", Reason.RELAY) is None
    block = g.count("192.0.2.7", Reason.RELAY)
    assert block is not None and block.reason == "RELAY"
    # The trip starts the address's counters again: after its block expires it gets a full window
    assert g.count_of("192.0.2.7", Reason.UNKNOWNRCPT) == 0
    assert g.count_of("192.0.2.8", Reason.RELAY) == 1


def test_a_rule_at_zero_is_off() -> None:
    clock = Clock()
    g = guard(clock, max_rsets=0, max_oversize=0, max_connections_per_minute=0)
    for _ in range(10_000):
        assert g.count("192.0.2.7", Reason.RSET) is None
        assert g.count("192.0.2.7", Reason.OVERSIZE) is None
        assert g.count("192.0.2.7", Reason.CONNRATE) is None
    assert not g.enabled(Reason.RSET) and g.count_of("192.0.2.7", Reason.RSET) == 0


def test_defaults_match_the_documented_ones() -> None:
    p = ProtectionConfig()
    assert (p.block_time, p.window) == (3600.0, 600.0)
    assert (p.max_auth_failures, p.max_unknown_recipients, p.max_relay_attempts) == (10, 50, 20)
    assert (p.max_rsets, p.max_oversize, p.max_connections_per_minute) == (0, 0, 0)
    assert (p.greeting_delay, p.max_pregreets) == (0.0, 1)
    assert (p.max_messages_per_user, p.max_messages_per_sender) == (0, 0)
    g = Guard(p)
    on = {r for r in Reason if g.enabled(r)}
    assert on == {Reason.AUTHFAIL, Reason.UNKNOWNRCPT, Reason.RELAY, Reason.PREGREET}
    assert not g.counts_messages


def test_auth_brute_force_is_blocked_after_the_tenth_failure_by_default() -> None:
    clock = Clock()
    g = Guard(ProtectionConfig(), clock=clock)
    results = []
    for _ in range(10):
        clock.now += 5  # one guess every 5 s: 10 in 50 s
        results.append(g.count("203.0.113.9", Reason.AUTHFAIL))
    assert results[:9] == [None] * 9
    assert results[9] is not None
    assert results[9].detail == "10 failed AUTH attempts in 600 s"
    assert results[9].expires - results[9].created == 3600


def test_a_person_mistyping_is_not_blocked_by_default() -> None:
    clock = Clock()
    g = Guard(ProtectionConfig(), clock=clock)
    for _ in range(50):  # a wrong password every two minutes, for 100 minutes
        clock.now += 120
        assert g.count("198.51.100.4", Reason.AUTHFAIL) is None


def test_memory_is_bounded_least_recently_active_dropped() -> None:
    clock = Clock()
    g = Guard(dataclasses.replace(ProtectionConfig(), max_relay_attempts=5), clock=clock,
              max_tracked=100)
    for i in range(100):
        g.count(f"10.0.0.{i}", Reason.RELAY)
    g.count("10.0.0.0", Reason.RELAY)  # touched again: now the most recently active
    g.count("10.0.1.0", Reason.RELAY)  # one address too many: the least recently active goes
    assert g.count_of("10.0.0.1", Reason.RELAY) == 0
    assert g.count_of("10.0.0.0", Reason.RELAY) == 2
    assert g.count_of("10.0.1.0", Reason.RELAY) == 1
    window = SlidingWindow(2, 600, clock, max_keys=100)
    for i in range(1000):
        window.hit(f"key{i}")
    assert len(window) == 100
    assert window.count("key0") == 0 and window.count("key999") == 1


def test_lru_keeps_the_active_attacker() -> None:
    clock = Clock()
    window = SlidingWindow(5, 600, clock, max_keys=10)
    window.hit("attacker")
    for i in range(30):  # others come and go; the attacker keeps hitting
        window.hit(f"other{i}")
        if i % 5 == 0:
            window.hit("attacker")
    assert window.count("attacker") == 5  # capped at the limit: only the newest ones matter


def test_manual_block() -> None:
    clock = Clock()
    g = guard(clock, block_time=100.0)
    b = g.manual("192.0.2.9")
    assert (b.reason, b.detail, b.expires - b.created) == (
        "MANUAL", "blocked by the administrator", 100)
    b = g.manual("192.0.2.9", 30, "spam run")
    assert (b.detail, b.expires - b.created) == ("spam run", 30)


def test_message_rate_per_user_and_per_sender() -> None:
    clock = Clock()
    g = guard(clock, max_messages_per_user=3, max_messages_per_sender=2, window=60.0)
    assert g.counts_messages
    for _ in range(3):
        assert g.message_refusal("alice@example.test", None) is None
        g.message_sent("alice@example.test", None)
    assert g.message_refusal("Alice@Example.test", None) == (
        "user Alice@Example.test sent 3 messages in 60 s")
    assert g.message_refusal("bob@example.test", None) is None  # per user
    for _ in range(2):
        assert g.message_refusal(None, "news@example.test") is None
        g.message_sent(None, "news@example.test")
    assert g.message_refusal(None, "news@example.test") == (
        "sender news@example.test sent 2 messages in 60 s")
    clock.now += 61  # the window has passed: allowed again
    assert g.message_refusal("alice@example.test", "news@example.test") is None


def test_message_rates_off_by_default_never_refuse() -> None:
    g = Guard(ProtectionConfig())
    for _ in range(1000):
        g.message_sent("alice@example.test", "alice@example.test")
    assert g.message_refusal("alice@example.test", "alice@example.test") is None


@pytest.mark.parametrize(("text", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
])
def test_canonical_ip(text: str, key: str) -> None:
    assert canonical_ip(text) == key


@pytest.mark.parametrize("text", ["", "example.test", "192.0.2.300", "1.2.3"])
def test_canonical_ip_refuses_non_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_ip(text)


@given(ip=st.ip_addresses().map(str), seconds=st.integers(1, 10**7),
       reason=st.sampled_from([r.value for r in Reason]),
       detail=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=60))
def test_block_lines_parse_back(ip: str, seconds: int, reason: str, detail: str) -> None:
    assert fmt.parse_blocked(fmt.blocked(ip, seconds, reason, detail)) == (ip, reason, detail)
    line = fmt.refused_blocked(ip, "2026-11-29 03:00:00", reason, detail)
    assert fmt.parse_blocked(line) == (ip, reason, detail)


@given(st.text(max_size=200))
def test_parse_blocked_never_raises(text: str) -> None:
    got = fmt.parse_blocked(text)
    assert got is None or (got[1].isupper() and text.endswith(")"))
