"""The DNS resolver: dnspython's async stub resolver behind a small typed API.

Where it sits: every DNS question mailferry asks goes through here — the sender checks in
``verify.sender`` (MX, A/AAAA, PTR for each MAIL FROM and connection) and MX routing in ``dns.mx``
for outbound delivery. ``daemon.py`` builds one ``Resolver`` from ``[dns]`` in the config and hands
it down; tests point it at ``tests/support/fakedns.py`` on a loopback port.

What it must not do: raise for DNS outcomes (NXDOMAIN, no data, SERVFAIL, timeouts are all values
of ``Status``), decide policy (that is ``verify/`` and ``dns.mx``), or log (callers put ``detail``
in the transaction log, where it belongs to a session).

Caching: dnspython's LRU cache keeps positive answers for their TTL and negative answers (NXDOMAIN,
NODATA) for the SOA minimum (RFC 2308 §5), so repeated MAIL FROM domains cost no queries. Server
failures and timeouts are not cached: the next attempt asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import dns.reversename

if TYPE_CHECKING:
    from mailferry.metrics import Metrics

# The longest wait for one server's answer before asking again (dnspython's own default), so a
# lost UDP packet costs 2 s, not the whole timeout.
_ATTEMPT_TIMEOUT = 2.0
# Entries, not bytes: an MX answer is a few hundred bytes, so this stays in the low megabytes.
_CACHE_SIZE = 10_000

R = TypeVar("R")
MxRecord = tuple[int, str]  # (preference, host)


class Status(Enum):
    OK = "ok"
    NXDOMAIN = "nxdomain"  # the name does not exist (RFC 1035 §4.1.1 RCODE 3)
    NODATA = "nodata"  # the name exists, but has no record of the asked type (RFC 2308 §2.2)
    TEMPFAIL = "tempfail"  # SERVFAIL, REFUSED, timeout, no nameserver answered: ask again later


@dataclass(frozen=True)
class Answer(Generic[R]):
    status: Status
    # mx(): ((preference, host), ...); addresses(): (ip, ...); ptr(): (name, ...).
    # Names never carry the trailing dot; the root name (null MX) is ".".
    records: tuple[R, ...]
    detail: str  # for the transaction log: "mx1.example.net (10)", "NXDOMAIN", "SERVFAIL from …"
    # Set when the asked name is an alias: the name its CNAME chain ended at. RFC 2181 §10.3 says
    # MX targets must not be aliases, so dns.mx needs to see it.
    canonical: str | None = None


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _server(described: str, port: int) -> str:
    # dnspython describes a nameserver as "Do53:127.0.0.1@5353"; the log wants "127.0.0.1:5353".
    return f"{described.removeprefix('Do53:').rsplit('@', 1)[0]}:{port}"


def _failure_detail(exc: dns.exception.DNSException) -> str:
    """What went wrong and which server said so, e.g. "SERVFAIL from 127.0.0.1:53"."""
    errors = exc.kwargs.get("errors") or []
    if isinstance(exc, dns.exception.Timeout):
        servers = ", ".join(dict.fromkeys(_server(srv, port) for srv, _, port, _, _ in errors))
        timeout = exc.kwargs.get("timeout")
        within = f" within {timeout:.1f}s" if isinstance(timeout, float) else ""
        return f"no answer{within}" + (f" from {servers}" if servers else "")
    if isinstance(exc, dns.resolver.NoNameservers) and not errors:
        return "no nameservers configured"
    parts = []
    for server, tcp, port, err, _response in errors:
        if isinstance(err, str):
            what = err  # an RCODE name: "SERVFAIL", "REFUSED"
        elif isinstance(err, dns.exception.Timeout):
            what = "timeout"
        else:
            what = str(err) or type(err).__name__
        parts.append(f"{what} from {_server(server, port)}{'/tcp' if tcp else ''}")
    # Retries of the same server repeat the same failure: once is enough for the log.
    return "; ".join(dict.fromkeys(parts)) or type(exc).__name__


class Resolver:
    """Typed DNS lookups. ``nameservers`` as (ip, port) pairs; empty means the system resolver.

    ``timeout`` bounds one lookup in seconds (all retries and servers included), because an SMTP
    session is waiting on it.
    """

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), timeout: float = 5.0,
                 metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        if nameservers:
            # configure=False: /etc/resolv.conf must not add servers or a search list behind the
            # configuration's back.
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers
            ]
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # No /etc/resolv.conf (some containers): every lookup answers TEMPFAIL "no
                # nameservers configured" rather than failing at startup.
                self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.lifetime = timeout
        # Share the budget, so that a silent first server leaves time to ask the next one.
        servers = max(1, len(self._resolver.nameservers))
        self._resolver.timeout = min(timeout / servers, _ATTEMPT_TIMEOUT)
        self._resolver.cache = dns.resolver.LRUCache(_CACHE_SIZE)

    async def _query(self, name: str | dns.name.Name, rdtype: str) -> Answer[Any]:
        """Ask one question; an OK answer carries dnspython's rdata objects as records."""
        answer = await self._ask(name, rdtype)
        if self._metrics is not None:
            self._metrics.dns_lookup(rdtype, answer.status.value)
        return answer

    async def _ask(self, name: str | dns.name.Name, rdtype: str) -> Answer[Any]:
        try:
            qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as exc:
            # A name that cannot be encoded (empty label, label over 63 octets, bad IDN) cannot
            # exist in the DNS: say so the same way the DNS would.
            return Answer(Status.NXDOMAIN, (), f"NXDOMAIN (invalid name: {exc})")
        if qname == dns.name.root and not isinstance(name, dns.name.Name):
            # "", "." and "@" all parse as the root, which is never a mail domain or host.
            return Answer(Status.NXDOMAIN, (), f"NXDOMAIN (invalid name: {name!r})")
        try:
            ans = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer(Status.NXDOMAIN, (), "NXDOMAIN")
        except dns.exception.DNSException as exc:
            # NoNameservers (SERVFAIL/REFUSED everywhere), LifetimeTimeout, YXDOMAIN and friends:
            # none of them says the name is bad, so the caller retries later.
            return Answer(Status.TEMPFAIL, (), _failure_detail(exc))
        canonical = None if ans.canonical_name == qname else _text(ans.canonical_name)
        if ans.rrset is None:
            return Answer(Status.NODATA, (), f"no {rdtype} records (NODATA)", canonical)
        return Answer(Status.OK, tuple(ans.rrset), "", canonical)

    async def mx(self, domain: str) -> Answer[MxRecord]:
        """MX records of ``domain``, sorted by preference then name (the order is for the log;
        delivery randomises equal preferences in ``dns.mx.order_mx``)."""
        answer = await self._query(domain, "MX")
        # The root target keeps its "." (_text gives "." for it): that is how a null MX looks
        # (RFC 7505 §3).
        records = sorted((rd.preference, _text(rd.exchange)) for rd in answer.records)
        detail = ", ".join(f"{host} ({pref})" for pref, host in records) or answer.detail
        return Answer(answer.status, tuple(records), detail, answer.canonical)

    async def addresses(self, name: str) -> Answer[str]:
        """A and AAAA records of ``name`` together, IPv4 first."""
        a, aaaa = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"))
        canonical = a.canonical or aaaa.canonical
        ips = tuple(rd.address for rd in a.records + aaaa.records)
        if ips:
            detail = ", ".join(ips)
            # One family answering is enough to connect, but the log should say the other failed.
            for family, ans in (("A", a), ("AAAA", aaaa)):
                if ans.status is Status.TEMPFAIL:
                    detail += f" ({family} lookup failed: {ans.detail})"
            return Answer(Status.OK, ips, detail, canonical)
        if Status.TEMPFAIL in (a.status, aaaa.status):
            failed = a if a.status is Status.TEMPFAIL else aaaa
            return Answer(Status.TEMPFAIL, (), failed.detail, canonical)
        if a.status is aaaa.status is Status.NXDOMAIN:
            return Answer(Status.NXDOMAIN, (), a.detail, canonical)
        return Answer(Status.NODATA, (), "no A or AAAA records (NODATA)", canonical)

    async def ptr(self, ip: str) -> Answer[str]:
        """PTR names of ``ip`` (RFC 1035 §3.5 in-addr.arpa, RFC 3596 §2.5 ip6.arpa)."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return Answer(Status.NXDOMAIN, (), f"NXDOMAIN (not an IP address: {ip!r})")
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; their PTR lives under
        # in-addr.arpa, not ip6.arpa.
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        answer = await self._query(dns.reversename.from_address(str(addr)), "PTR")
        names = tuple(_text(rd.target) for rd in answer.records)
        return Answer(answer.status, names, ", ".join(names) or answer.detail, answer.canonical)
