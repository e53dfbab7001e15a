"""txlog.format as the tracker reads it: round trips for every line kind, and the fast splitter
(split_line) that must always agree with the reference parser (parse_line)."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.txlog import format as fmt
from mailferry.txlog.format import Kind

ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda g: ":".join(f"{x:x}" for x in g))
peers = st.one_of(ipv4, ipv6, st.just(fmt.SYSTEM_PEER))
sids = st.integers(0, 0xFFFF).map(lambda n: f"{n:04X}") | st.integers(0, 0xFFFFFFFF).map(
    lambda n: f"{n:08X}")
clocks = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)).map(
    lambda t: f"{t[0]:02d}:{t[1]:02d}:{t[2]:02d}")
printable = st.text(string.ascii_letters + string.digits + " .,;:<>@[]()=-_/'\"", max_size=60)
addr = st.from_regex(r"\A[a-z0-9.]{1,12}@[a-z0-9]{1,10}\.[a-z]{2,4}\Z") | st.just("")
msgids = st.from_regex(r"\AMF[0-9A-Z]{10}\Z")

# One strategy per line kind, each with the kind the reader must see.
bodies = st.one_of(
    st.tuples(st.one_of(st.none(), ipv4).map(fmt.connected), st.just(Kind.CONNECTED)),
    st.tuples(printable.map(fmt.sent), st.just(Kind.SENT)),
    st.tuples(printable.map(fmt.received), st.just(Kind.RECEIVED)),
    st.tuples(st.builds(fmt.data_bytes, st.just(">>>"), st.integers(0, 10**9),
                        st.floats(0.001, 100)), st.just(Kind.BYTES_SENT)),
    st.tuples(st.builds(fmt.data_bytes, st.just("<<<"), st.integers(0, 10**9),
                        st.floats(0.001, 100)), st.just(Kind.BYTES_RECEIVED)),
    st.tuples(st.just(fmt.START_PROCESSING), st.just(Kind.START_PROCESSING)),
    st.tuples(st.builds(fmt.summary, addr, addr, st.integers(1, 100), st.integers(0, 10**8),
                        st.integers(0, 10**5).map(fmt.hms), st.sampled_from(fmt.STATUSES),
                        msgids), st.just(Kind.SUMMARY)),
    st.tuples(st.just(fmt.DISCONNECTED), st.just(Kind.DISCONNECTED)),
    st.tuples(printable.filter(lambda t: t[:1].isalpha() and not t.startswith(("Connected",
              "Disconnected", "Start of mail"))), st.just(Kind.TEXT)),
)


@settings(max_examples=400)
@given(peers, sids, clocks, bodies)
def test_every_kind_round_trips(peer: str, sid: str, clock: str, body_kind) -> None:
    body, kind = body_kind
    line = fmt.line(peer, sid, clock, body)
    parsed = fmt.parse_line(line + "\n")
    assert parsed is not None
    assert parsed.format() == line
    assert parsed.kind is kind
    assert (parsed.peer, parsed.sid, parsed.stamp) == (peer, sid, clock)
    assert fmt.split_line(line) == (peer, sid, clock, body)


@given(st.builds(fmt.summary, addr, addr, st.integers(1, 100), st.integers(0, 10**8),
                 st.integers(0, 10**5).map(fmt.hms), st.sampled_from(fmt.STATUSES), msgids))
def test_summary_fields(body: str) -> None:
    s = fmt.parse_summary(body)
    assert s is not None
    assert fmt.summary(s.sender, s.rcpt, s.count, s.size, s.duration, s.status,
                       s.msgid or "") == body


def _agree(raw: str) -> None:
    ref = fmt.parse_line(raw)
    got = fmt.split_line(raw)
    if ref is None:
        assert got is None
    else:
        assert got == (ref.peer, ref.sid, ref.stamp, ref.body)


@settings(max_examples=1000)
@given(st.text(max_size=80))
def test_split_line_agrees_with_parse_line_on_any_text(raw: str) -> None:
    _agree(raw)


@settings(max_examples=1000)
@given(peers, sids, clocks, bodies, st.integers(0, 40), st.characters(), st.booleans())
def test_split_line_agrees_on_damaged_lines(peer, sid, clock, body_kind, pos, char, insert):
    """Near-misses (one character changed or inserted) are where a fast path goes wrong."""
    line = fmt.line(peer, sid, clock, body_kind[0])
    pos = min(pos, len(line))
    damaged = line[:pos] + char + line[pos + (0 if insert else 1):]
    _agree(damaged)
    _agree(damaged + "\n")


@given(st.sampled_from(["Thu, 22 Apr 2004 22:01:42 +0200", "Mon, 1 Jan 2024 00:00:00",
                        "Sat, 28 Nov 2026 23:59:59 -0500"]), printable)
def test_full_date_stamps(stamp: str, text: str) -> None:
    raw = f"127.0.0.1 [00000A1C] {stamp} >>> {text}"
    _agree(raw)
    assert fmt.split_line(raw)[2] == stamp
    assert fmt.stamp_seconds(stamp) == fmt.stamp_seconds(stamp.split()[4])


@given(st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"),
       st.lists(st.tuples(st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"), st.integers(0, 65535)),
                min_size=1, max_size=5))
def test_dns_mx_round_trip(domain, hosts) -> None:
    assert fmt.parse_dns_mx(fmt.dns_mx(domain, hosts)) == (domain, hosts, None)
    assert fmt.parse_dns_mx(fmt.dns_mx_failed(domain, "SERVFAIL")) == (domain, [], "SERVFAIL")


@given(st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"), ipv4, st.integers(1, 65535),
       st.none() | st.sampled_from(["connection refused", "timed out"]))
def test_connecting_round_trip(host, ip, port, error) -> None:
    assert fmt.parse_connecting(fmt.connecting(host, ip, port, error)) == (host, ip, port, error)


@given(msgids, msgids, printable)
def test_bounce_and_retry_round_trip(b, a, reason) -> None:
    assert fmt.parse_bounce(fmt.bounce_created(b, a, reason)) == (b, a)
    assert fmt.parse_next_retry(fmt.next_retry("2026-11-28 11:15:04")) == "2026-11-28 11:15:04"


def test_log_file_names() -> None:
    for name in ("s20261128.log", "s20261128-01.log", "s120261128.log", "20261128.log",
                 "s20261128.log.gz"):
        assert fmt.LOG_NAME_RE.match(name), name
    for name in ("s2026112.log", "x20261128.log", "s20261128.txt"):
        assert not fmt.LOG_NAME_RE.match(name), name
    assert fmt.log_file_name("20261128") == "s20261128.log"
    assert fmt.log_file_name("20261128", 1) == "s20261128-01.log"
