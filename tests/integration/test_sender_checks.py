"""Sender domain and client rDNS checks against the fake DNS, every branch, over real UDP."""

from __future__ import annotations

import asyncio

import pytest

from mailferry.dns.resolver import Resolver
from mailferry.verify.sender import check_client_rdns, check_sender_domain
from tests.support.fakedns import FakeDNS

run = asyncio.run


@pytest.mark.parametrize(
    ("domain", "action", "evidence"),
    [
        ("example.test", "accept", "sender_domain_check: example.test has MX mx.example.test (10)"),
        # Only the MX's existence is checked, not whether its target resolves.
        ("mx-only.test", "accept", "has MX mail.mx-only.test (10)"),
        ("a-only.test", "accept", "has no MX but has address 192.0.2.10 (implicit MX)"),
        ("aaaa-only.test", "accept", "has address 2001:db8::10 (implicit MX)"),
        ("nosuch.test", "reject",
         "sender_domain_check: nosuch.test does not exist (NXDOMAIN) - rejected"),
        ("txt-only.test", "reject", "has no MX and no A/AAAA records - rejected"),
        # An A record must not undo a null MX.
        ("nullmx.test", "reject", "nullmx.test has a null MX (RFC 7505)"),
        ("servfail.test", "tempfail", "MX lookup for servfail.test failed: SERVFAIL from"),
        ("timeout.test", "tempfail", "MX lookup for timeout.test failed: no answer within"),
        ("[192.0.2.1]", "accept", "address literal"),
        ("", "accept", "null sender"),
    ],
)
def test_check_sender_domain(resolver: Resolver, domain: str, action: str, evidence: str) -> None:
    decision = run(check_sender_domain(resolver, domain))
    assert decision.action == action
    assert evidence in decision.evidence
    assert decision.evidence.startswith("sender_domain_check: ")


def test_sender_domain_address_lookup_tempfail(resolver: Resolver, fakedns: FakeDNS) -> None:
    # MX says NODATA, then the A/AAAA lookup fails: not enough to reject.
    fakedns.add("flaky.test", "TXT", "exists")
    fakedns.add("flaky.test", "SERVFAIL", "A AAAA")
    decision = run(check_sender_domain(resolver, "flaky.test"))
    assert decision.action == "tempfail"
    assert "flaky.test has no MX and its address lookup failed: SERVFAIL" in decision.evidence


def test_sender_domain_repeat_is_answered_from_cache(resolver: Resolver, fakedns: FakeDNS) -> None:
    async def many() -> None:
        for _ in range(5):
            assert (await check_sender_domain(resolver, "nosuch.test")).action == "reject"
            assert (await check_sender_domain(resolver, "a-only.test")).action == "accept"

    run(many())
    assert fakedns.count("nosuch.test") == 1
    assert fakedns.count("a-only.test") == 3  # MX, A, AAAA once each


def test_rdns_forward_confirmed(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.1"))
    assert (res.name, res.confirmed, res.tempfail) == ("localhost.example.test", True, False)
    assert res.evidence == ("client_rdns: 127.0.0.1 is localhost.example.test, which resolves "
                            "back (forward-confirmed)")


def test_rdns_ipv6_and_mapped_ipv4(resolver: Resolver) -> None:
    assert run(check_client_rdns(resolver, "::1")).confirmed
    mapped = run(check_client_rdns(resolver, "::ffff:127.0.0.1"))
    assert (mapped.name, mapped.confirmed) == ("localhost.example.test", True)


def test_rdns_second_ptr_name_confirms(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.9"))
    assert (res.name, res.confirmed) == ("second.example.test", True)


def test_rdns_name_resolving_elsewhere_is_unconfirmed(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.5"))
    assert (res.name, res.confirmed, res.tempfail) == ("liar.example.test", False, False)
    assert "does not resolve back" in res.evidence
    assert "liar.example.test -> 127.0.0.6" in res.evidence


def test_rdns_ptr_name_that_does_not_exist(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.7"))
    assert (res.name, res.confirmed, res.tempfail) == ("gone.example.test", False, False)
    assert "gone.example.test -> NXDOMAIN" in res.evidence


def test_rdns_forward_lookup_failure_is_tempfail(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.8"))
    assert (res.name, res.confirmed, res.tempfail) == ("sf.broken-mx.test", False, True)
    assert "forward lookup failed" in res.evidence


def test_rdns_no_ptr(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.2"))
    assert (res.name, res.confirmed, res.tempfail) == (None, False, False)
    assert res.evidence == "client_rdns: 127.0.0.2 has no PTR record (NXDOMAIN)"


def test_rdns_ptr_lookup_failure(resolver: Resolver) -> None:
    res = run(check_client_rdns(resolver, "127.0.0.3"))
    assert (res.name, res.confirmed, res.tempfail) == (None, False, True)
    assert res.evidence.startswith("client_rdns: PTR lookup for 127.0.0.3 failed: SERVFAIL")


def test_rdns_timeout_is_tempfail(resolver: Resolver, fakedns: FakeDNS) -> None:
    fakedns.add("127.0.0.4", "TIMEOUT")
    res = run(check_client_rdns(resolver, "127.0.0.4"))
    assert (res.name, res.tempfail) == (None, True)
    assert "no answer within" in res.evidence
