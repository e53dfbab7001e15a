"""The resolver, MX routing and the fake DNS server itself, over real UDP/TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from mailferry.dns.mx import DOMAIN_NOT_FOUND, NO_ROUTE, NULL_MX, route
from mailferry.dns.resolver import Resolver, Status
from tests.support.fakedns import FakeDNS

run = asyncio.run


# --- Resolver.mx ---------------------------------------------------------------------------------
def test_mx_answer_is_sorted_with_a_log_detail(resolver: Resolver) -> None:
    ans = run(resolver.mx("multi.test"))
    assert ans.status is Status.OK
    assert ans.records == ((10, "mx1.multi.test"), (10, "mx2.multi.test"), (20, "mx3.multi.test"))
    assert ans.detail == "mx1.multi.test (10), mx2.multi.test (10), mx3.multi.test (20)"


def test_mx_null_mx_host_is_the_root(resolver: Resolver) -> None:
    ans = run(resolver.mx("nullmx.test"))
    assert (ans.status, ans.records) == (Status.OK, ((0, "."),))


def test_mx_nxdomain_and_nodata_are_told_apart(resolver: Resolver) -> None:
    nx = run(resolver.mx("nosuch.test"))
    nodata = run(resolver.mx("txt-only.test"))
    assert (nx.status, nx.detail) == (Status.NXDOMAIN, "NXDOMAIN")
    assert nodata.status is Status.NODATA
    assert "NODATA" in nodata.detail


def test_servfail_is_tempfail_naming_the_server(resolver: Resolver, fakedns: FakeDNS) -> None:
    ans = run(resolver.mx("servfail.test"))
    assert ans.status is Status.TEMPFAIL
    assert ans.detail == f"SERVFAIL from 127.0.0.1:{fakedns.port}"


def test_silent_server_is_tempfail_after_the_timeout(resolver: Resolver, fakedns: FakeDNS) -> None:
    start = time.monotonic()
    ans = run(resolver.mx("timeout.test"))
    elapsed = time.monotonic() - start
    assert ans.status is Status.TEMPFAIL
    assert ans.detail.startswith("no answer within")
    assert f"127.0.0.1:{fakedns.port}" in ans.detail
    assert 0.4 < elapsed < 2.0  # the resolver's 0.5 s, plus dnspython's retry backoff


def test_nameserver_not_listening_is_tempfail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed now: the kernel answers with ICMP port unreachable.
    ans = run(Resolver([("127.0.0.1", port)], timeout=0.5).mx("example.test"))
    assert ans.status is Status.TEMPFAIL
    assert f"127.0.0.1:{port}" in ans.detail


def test_invalid_names_answer_nxdomain_without_asking(resolver: Resolver, fakedns: FakeDNS) -> None:
    for name in ("a..test", "x" * 64 + ".test", "", "."):
        ans = run(resolver.mx(name))
        assert ans.status is Status.NXDOMAIN
        assert "invalid name" in ans.detail
    assert fakedns.queries == []


def test_second_server_answers_when_the_first_is_silent(fakedns: FakeDNS) -> None:
    with FakeDNS() as silent:
        silent.add("example.test", "TIMEOUT")
        r = Resolver([silent.nameserver, fakedns.nameserver], timeout=1.0)
        ans = run(r.mx("example.test"))
    assert ans.records == ((10, "mx.example.test"),)


# --- caching -----------------------------------------------------------------------------------
def test_positive_and_negative_answers_are_cached(resolver: Resolver, fakedns: FakeDNS) -> None:
    async def twice() -> None:
        for name in ("example.test", "nosuch.test", "txt-only.test"):
            first = await resolver.mx(name)
            assert await resolver.mx(name) == first

    run(twice())
    for name in ("example.test", "nosuch.test", "txt-only.test"):
        assert fakedns.count(name, "MX") == 1, name


def test_failures_are_not_cached(resolver: Resolver, fakedns: FakeDNS) -> None:
    run(resolver.mx("servfail.test"))
    run(resolver.mx("servfail.test"))
    assert fakedns.count("servfail.test", "MX") == 2


# --- Resolver.addresses ------------------------------------------------------------------------
def test_addresses_joins_a_and_aaaa(resolver: Resolver) -> None:
    ans = run(resolver.addresses("mx.example.test"))
    assert (ans.status, ans.records, ans.detail) == (Status.OK, ("127.0.0.1", "::1"),
                                                     "127.0.0.1, ::1")
    assert run(resolver.addresses("a-only.test")).records == ("192.0.2.10",)
    assert run(resolver.addresses("aaaa-only.test")).records == ("2001:db8::10",)


def test_addresses_nxdomain_nodata_tempfail(resolver: Resolver) -> None:
    assert run(resolver.addresses("nosuch.test")).status is Status.NXDOMAIN
    assert run(resolver.addresses("txt-only.test")).status is Status.NODATA
    assert run(resolver.addresses("servfail.test")).status is Status.TEMPFAIL


def test_addresses_one_family_failing_still_answers(resolver: Resolver, fakedns: FakeDNS) -> None:
    fakedns.add("half.test", "A", "192.0.2.7")
    fakedns.add("half.test", "SERVFAIL", "AAAA")
    ans = run(resolver.addresses("half.test"))
    assert (ans.status, ans.records) == (Status.OK, ("192.0.2.7",))
    assert ans.detail.startswith("192.0.2.7 (AAAA lookup failed: SERVFAIL from 127.0.0.1:")


def test_addresses_reports_the_alias_it_followed(resolver: Resolver) -> None:
    ans = run(resolver.addresses("alias.cname-mx.test"))
    assert (ans.records, ans.canonical) == (("127.0.0.21",), "real.cname-mx.test")
    assert run(resolver.addresses("real.cname-mx.test")).canonical is None


def test_large_answer_is_truncated_on_udp_and_retried_over_tcp(
    resolver: Resolver, fakedns: FakeDNS
) -> None:
    ips = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)]  # 100 A records: > 512 octets
    for ip in ips:
        fakedns.add("many.test", "A", ip)
    ans = run(resolver.addresses("many.test"))
    assert sorted(ans.records) == sorted(ips)
    protocols = [q.protocol for q in fakedns.queries if q.name == "many.test" and q.rtype == "A"]
    assert protocols == ["udp", "tcp"]


# --- Resolver.ptr ------------------------------------------------------------------------------
def test_ptr(resolver: Resolver) -> None:
    assert run(resolver.ptr("127.0.0.1")).records == ("localhost.example.test",)
    assert run(resolver.ptr("::1")).records == ("localhost6.example.test",)
    # A dual-stack socket's view of an IPv4 peer: looked up under in-addr.arpa.
    assert run(resolver.ptr("::ffff:127.0.0.1")).records == ("localhost.example.test",)
    assert run(resolver.ptr("127.0.0.2")).status is Status.NXDOMAIN
    assert run(resolver.ptr("127.0.0.3")).status is Status.TEMPFAIL
    assert run(resolver.ptr("not-an-ip")).status is Status.NXDOMAIN


# --- mx.route ----------------------------------------------------------------------------------
def test_route_orders_hosts_with_their_addresses(resolver: Resolver) -> None:
    firsts = set()
    for seed in range(20):
        r = run(route(resolver, "multi.test", 5, random.Random(seed)))
        assert r.outcome == "hosts"
        names = [h.name for h in r.hosts]
        assert sorted(names[:2]) == ["mx1.multi.test", "mx2.multi.test"]
        assert names[2] == "mx3.multi.test"
        firsts.add(names[0])
    assert firsts == {"mx1.multi.test", "mx2.multi.test"}  # equal preferences spread the load
    hosts = {h.name: h.addresses for h in r.hosts}
    assert hosts["mx3.multi.test"] == ("2001:db8::13",)
    assert "mx3.multi.test [2001:db8::13]" in r.detail


def test_route_stops_at_max_hosts(resolver: Resolver) -> None:
    r = run(route(resolver, "multi.test", 2))
    assert [h.name for h in r.hosts if h.name == "mx3.multi.test"] == []
    assert len(r.hosts) == 2


def test_route_skips_cname_targets(resolver: Resolver) -> None:
    r = run(route(resolver, "cname-mx.test", 5))
    assert [h.name for h in r.hosts] == ["real.cname-mx.test"]
    assert "alias.cname-mx.test: alias for real.cname-mx.test" in r.detail


def test_route_implicit_mx(resolver: Resolver) -> None:
    r = run(route(resolver, "a-only.test", 5))
    assert (r.outcome, r.hosts[0].name, r.hosts[0].addresses) == ("hosts", "a-only.test",
                                                                   ("192.0.2.10",))
    assert "implicit MX" in r.detail
    assert run(route(resolver, "aaaa-only.test", 5)).hosts[0].addresses == ("2001:db8::10",)


def test_route_implicit_mx_may_be_an_alias(resolver: Resolver, fakedns: FakeDNS) -> None:
    fakedns.add("alias-domain.test", "CNAME", "real.cname-mx.test")
    r = run(route(resolver, "alias-domain.test", 5))
    assert r.outcome == "hosts"
    assert r.hosts[0].addresses == ("127.0.0.21",)


def test_route_skips_unresolvable_targets(resolver: Resolver) -> None:
    r = run(route(resolver, "half-broken.test", 5))
    assert [h.name for h in r.hosts] == ["ok.half-broken.test"]
    assert "gone.half-broken.test: NXDOMAIN" in r.detail


def test_route_permanent_failures(resolver: Resolver) -> None:
    nx = run(route(resolver, "nosuch.test", 5))
    null = run(route(resolver, "nullmx.test", 5))
    nothing = run(route(resolver, "txt-only.test", 5))
    dead_targets = run(route(resolver, "mx-only.test", 5))
    assert (nx.outcome, nx.reply) == ("permfail", DOMAIN_NOT_FOUND)
    assert (null.outcome, null.reply) == ("permfail", NULL_MX)
    assert null.reply is not None
    assert null.reply.lines == ("556 5.1.10 Recipient address has null MX",)
    assert (nothing.outcome, nothing.reply) == ("permfail", NO_ROUTE)
    assert (dead_targets.outcome, dead_targets.reply) == ("permfail", NO_ROUTE)
    assert "mail.mx-only.test: NXDOMAIN" in dead_targets.detail


def test_route_temporary_failures(resolver: Resolver) -> None:
    assert run(route(resolver, "servfail.test", 5)).outcome == "tempfail"
    # One target does not exist, the other SERVFAILs: it might work later.
    r = run(route(resolver, "broken-mx.test", 5))
    assert (r.outcome, r.hosts, r.reply) == ("tempfail", (), None)
    assert "sf.broken-mx.test: SERVFAIL" in r.detail
    assert run(route(resolver, "timeout.test", 5)).outcome == "tempfail"


# --- the fake server itself ----------------------------------------------------------------------
def test_fake_server_answers_txt_over_tcp(fakedns: FakeDNS) -> None:
    text = "v=spf1 " + "ip4:192.0.2.1 " * 60  # > 255 octets: several strings
    fakedns.add("big.test", "TXT", text)
    query = dns.message.make_query("big.test", "TXT")
    reply = run(dns.asyncquery.tcp(query, "127.0.0.1", port=fakedns.port, timeout=2))
    (rdata,) = reply.answer[0]
    assert b"".join(rdata.strings) == text.strip().encode()
    assert fakedns.queries[-1].protocol == "tcp"


def test_fake_server_empty_non_terminal_is_nodata(resolver: Resolver, fakedns: FakeDNS) -> None:
    fakedns.add("a.b.ent.test", "A", "192.0.2.1")
    assert run(resolver.addresses("b.ent.test")).status is Status.NODATA  # RFC 8020 §2
    assert run(resolver.addresses("c.ent.test")).status is Status.NXDOMAIN


def test_zone_file_errors_name_file_and_line(tmp_path: Path) -> None:
    zone = tmp_path / "bad.zone"
    zone.write_text("# fine\nok.test A 192.0.2.1\nbad.test MX ten mx.test\n")
    with pytest.raises(ValueError, match=r"bad\.zone:3: bad MX value"):
        FakeDNS([zone])


def test_fake_server_honours_a_given_port_and_frees_it() -> None:
    with FakeDNS() as first:
        port = first.port
    with FakeDNS(port=port) as second:
        second.add("x.test", "A", "127.0.0.2")
        ans = run(Resolver([second.nameserver], timeout=0.5).addresses("x.test"))
    assert (second.port, ans.records) == (port, ("127.0.0.2",))
