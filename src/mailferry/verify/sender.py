"""Checks on who is sending: does the MAIL FROM domain exist for mail, and does the client's
reverse DNS name resolve back to it.

Where it sits: ``inbound/session.py`` (through ``inbound/policy.py``) calls
``check_sender_domain`` for each MAIL FROM and ``check_client_rdns`` once per connection, with the
``Resolver`` that ``daemon.py`` built. Both return a decision and one line of evidence for the
transaction log, naming the rule and what the DNS said.

What it must not do: choose SMTP replies (the session does, from ``mailferry.reply``), read the
configuration (whether a check is on, or only logs, is policy's call), or touch sockets other
than through the resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Literal

from mailferry.dns.mx import is_null_mx
from mailferry.dns.resolver import Resolver, Status

# Forward-confirm at most this many PTR names: a long PTR set is either a mistake or an attempt
# to make us do work (RFC 7208 §5.5 caps the SPF "ptr" mechanism at 10 names for that reason).
_MAX_PTR_NAMES = 10


@dataclass(frozen=True)
class Decision:
    action: Literal["accept", "tempfail", "reject"]
    evidence: str


async def check_sender_domain(resolver: Resolver, domain: str) -> Decision:
    """Accept a domain that can receive replies (MX, or A/AAAA as implicit MX); reject one that
    does not exist or publishes a null MX; tempfail when the DNS cannot say."""
    rule = "sender_domain_check"
    if not domain:
        # The null reverse-path <> (RFC 5321 §4.5.5) has no domain: nothing to check.
        return Decision("accept", f"{rule}: null sender, no domain to check")
    if domain.startswith("["):
        # An address literal (RFC 5321 §4.1.3) names a host, not a DNS domain.
        return Decision("accept", f"{rule}: {domain} is an address literal, no DNS check")
    mx = await resolver.mx(domain)
    if mx.status is Status.OK:
        if is_null_mx(mx.records):
            # RFC 7505 §4.2: a null MX domain sends no mail, so mail claiming to be from it is
            # bogus and SHOULD be rejected.
            return Decision("reject", f"{rule}: {domain} has a null MX (RFC 7505), "
                                      "it sends no mail - rejected")
        return Decision("accept", f"{rule}: {domain} has MX {mx.detail}")
    if mx.status is Status.NXDOMAIN:
        return Decision("reject", f"{rule}: {domain} does not exist ({mx.detail}) - rejected")
    if mx.status is Status.TEMPFAIL:
        return Decision("tempfail", f"{rule}: MX lookup for {domain} failed: {mx.detail}"
                                    " - tempfail")
    # NODATA for MX: RFC 5321 §5.1's implicit MX makes the domain's own address good enough.
    addrs = await resolver.addresses(domain)
    if addrs.status is Status.OK:
        return Decision("accept", f"{rule}: {domain} has no MX but has address "
                                  f"{addrs.detail} (implicit MX)")
    if addrs.status is Status.TEMPFAIL:
        return Decision("tempfail", f"{rule}: {domain} has no MX and its address lookup "
                                    f"failed: {addrs.detail} - tempfail")
    return Decision("reject", f"{rule}: {domain} has no MX and no A/AAAA records - rejected")


@dataclass(frozen=True)
class RdnsResult:
    name: str | None  # the forward-confirmed name; else the first PTR name; None without PTR
    confirmed: bool  # the name's A/AAAA records contain the client's address
    tempfail: bool  # the DNS could not say: neither confirmed nor refuted
    evidence: str


async def check_client_rdns(resolver: Resolver, ip: str) -> RdnsResult:
    """Look up the PTR names of ``ip`` and forward-confirm them (FCrDNS): the first name whose
    A/AAAA records contain ``ip`` wins."""
    rule = "client_rdns"
    ptr = await resolver.ptr(ip)
    if ptr.status is Status.TEMPFAIL:
        return RdnsResult(None, False, True, f"{rule}: PTR lookup for {ip} failed: {ptr.detail}")
    if ptr.status is not Status.OK:
        return RdnsResult(None, False, False, f"{rule}: {ip} has no PTR record ({ptr.detail})")

    names = ptr.records[:_MAX_PTR_NAMES]
    client = _address(ip)
    lookups = await asyncio.gather(*(resolver.addresses(name) for name in names))
    seen: list[str] = []
    tempfailed = False
    for name, addrs in zip(names, lookups, strict=True):
        # Compare addresses, not strings: "2001:db8::1" and "2001:DB8:0::1" are one address,
        # and an IPv4 client may be reported as "::ffff:192.0.2.1".
        if addrs.status is Status.OK and client in {_address(a) for a in addrs.records}:
            return RdnsResult(name, True, False, f"{rule}: {ip} is {name}, which resolves back "
                                                 "(forward-confirmed)")
        tempfailed |= addrs.status is Status.TEMPFAIL
        seen.append(f"{name} -> {addrs.detail}")
    first = names[0]
    if tempfailed:
        return RdnsResult(first, False, True, f"{rule}: {ip} is {first}, but the forward lookup "
                                              f"failed ({'; '.join(seen)})")
    return RdnsResult(first, False, False, f"{rule}: {ip} is {first}, which does not resolve "
                                           f"back ({'; '.join(seen)})")


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
