"""MX routing: which hosts to try, in which order, for a recipient domain (RFC 5321 §5.1, RFC 7505).

Where it sits: ``delivery/remote.py`` calls ``route()`` before each delivery attempt and connects
to the hosts it returns, in order; ``verify/sender.py`` uses ``is_null_mx``. ``order_mx`` and
``is_null_mx`` are pure (unit-tested with hypothesis); ``route`` asks the DNS through the
``Resolver`` it is given.

What it must not do: connect to any host, decide retry times (``queue/schedule.py``), or drop the
local host from the list (RFC 5321 §5.1 asks for that, but only the caller knows its own names).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from mailferry.dns.resolver import MxRecord, Resolver, Status
from mailferry.reply import Reply

# Replies for permanent routing failures, for the DSN's Diagnostic-Code and the log.
# RFC 7505 §4.1 (and the 5.1.10 code it registers in §5): a null MX means "no mail, ever".
NULL_MX = Reply(556, "5.1.10", "Recipient address has null MX")
# RFC 3463 X.1.2: the destination system in the address does not exist.
DOMAIN_NOT_FOUND = Reply(550, "5.1.2", "Recipient domain not found")
# RFC 3463 X.4.4: unable to route - no MX or address records that lead to a mail server.
NO_ROUTE = Reply(550, "5.4.4", "No usable mail server for recipient domain")

# More MX hosts than this is a misconfiguration, not redundancy; never look up an unbounded list.
_MAX_CANDIDATES = 10
_RNG = random.Random()


def is_null_mx(records: Sequence[MxRecord]) -> bool:
    """True for a null MX: exactly one record, preference 0, the root as host (RFC 7505 §3)."""
    return len(records) == 1 and records[0][0] == 0 and records[0][1] in (".", "")


def order_mx(records: Iterable[MxRecord], rng: random.Random) -> list[str]:
    """Hosts by ascending preference, shuffled among equal preferences, each host once.

    RFC 5321 §5.1: lower preference first; among equal preferences the client SHOULD pick at
    random to spread the load. A host listed twice keeps its best preference. Root targets
    (".") are dropped: they lead nowhere, even in a set that is not a null MX.
    """
    ordered = sorted(records, key=lambda rec: (rec[0], rng.random()))
    hosts: dict[str, str] = {}  # lowercased -> as given: host names compare case-insensitively
    for _pref, host in ordered:
        name = host.rstrip(".")
        if name:
            hosts.setdefault(name.lower(), name)
    return list(hosts.values())


@dataclass(frozen=True)
class MxHost:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """Where to deliver mail for a domain, or why not.

    ``outcome`` is "hosts" (try ``hosts`` in order), "permfail" (bounce with ``reply``) or
    "tempfail" (defer and retry). ``detail`` is one line for the transaction log.
    """

    outcome: Literal["hosts", "permfail", "tempfail"]
    detail: str
    hosts: tuple[MxHost, ...] = ()
    reply: Reply | None = None
    mx: tuple[MxRecord, ...] = ()  # the MX answer as received (empty for implicit MX)


async def route(
    resolver: Resolver, domain: str, max_hosts: int, rng: random.Random = _RNG
) -> Route:
    """Resolve ``domain``'s mail servers to at most ``max_hosts`` hosts with their addresses."""
    mx = await resolver.mx(domain)
    if mx.status is Status.TEMPFAIL:
        return Route("tempfail", f"MX lookup for {domain} failed: {mx.detail}")
    if mx.status is Status.NXDOMAIN:
        return Route("permfail", f"{domain} does not exist ({mx.detail})",
                     reply=DOMAIN_NOT_FOUND)
    if mx.status is Status.OK and is_null_mx(mx.records):
        return Route("permfail", f"{domain} has a null MX: it accepts no mail (RFC 7505)",
                     reply=NULL_MX)
    if mx.status is Status.OK:
        candidates = order_mx(mx.records, rng)[:_MAX_CANDIDATES]
        source = f"MX {mx.detail}"
    else:
        # NODATA: RFC 5321 §5.1 implicit MX - the domain itself is the host, with preference 0.
        candidates = [domain]
        source = "no MX, implicit MX"
    implicit = mx.status is Status.NODATA

    lookups = await asyncio.gather(*(resolver.addresses(host) for host in candidates))
    hosts: list[MxHost] = []
    skipped: list[str] = []
    tempfailed = False
    for host, addrs in zip(candidates, lookups, strict=True):
        if len(hosts) >= max(1, max_hosts):
            break
        if addrs.status is Status.OK and addrs.canonical and not implicit:
            # RFC 2181 §10.3: an MX target must be a host's own name, not an alias. (The domain
            # of an implicit MX may be an alias: RFC 5321 §5.1 resolves CNAMEs for it.)
            skipped.append(f"{host}: alias for {addrs.canonical} (RFC 2181 §10.3)")
        elif addrs.status is Status.OK:
            hosts.append(MxHost(host, addrs.records))
        else:
            tempfailed |= addrs.status is Status.TEMPFAIL
            skipped.append(f"{host}: {addrs.detail}")

    found = ", ".join(f"{h.name} [{', '.join(h.addresses)}]" for h in hosts)
    why = f"; skipped {'; '.join(skipped)}" if skipped else ""
    if hosts:
        return Route("hosts", f"{domain}: {source} -> {found}{why}", hosts=tuple(hosts),
                     mx=tuple(mx.records) if mx.status is Status.OK else ())
    # RFC 5321 §5.1: MX records present but none usable (or an unusable implicit MX) is an error.
    # It is temporary if any lookup might succeed later.
    if tempfailed:
        return Route("tempfail", f"{domain}: {source}; no usable host yet{why}")
    return Route("permfail", f"{domain}: {source}; no usable host{why}", reply=NO_ROUTE)
