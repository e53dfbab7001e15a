"""A real DNS server for tests: dnslib on a loopback port, UDP and TCP, answering from simple zones.

Where it sits: tests start it (``with FakeDNS(...) as dns:`` or the ``fakedns`` fixture) and point
``mailferry.dns.resolver.Resolver`` — or a daemon's ``[dns] nameservers`` — at ``dns.nameserver``.
The code under test then does real DNS over real sockets; nothing in mailferry is patched.

What it must not do: recurse, forward, or listen anywhere but the address it is given (127.0.0.1 by
default). It is authoritative for every name it is asked about, and knows only its zones.

Zone files have one record a line, ``<name> <type> <value>``; ``#`` starts a comment::

    example.test      MX    10 mx.example.test
    mx.example.test   A     127.0.0.1
    example.org       MX    0 .                 # null MX (RFC 7505)
    127.0.0.1         PTR   localhost.example.test   # an IP as name: its reverse name
    big.example.test  TXT   any text; split into 255-octet strings
    broken.test       SERVFAIL                 # every query for the name: SERVFAIL
    silent.test       TIMEOUT                  # every query for the name: no answer at all
    half.test         SERVFAIL  AAAA           # only queries of these types: SERVFAIL

A name with no records (and no names below it) answers NXDOMAIN; a name with records of other
types answers NOERROR with no data. Negative answers carry an SOA, so resolvers cache them
(RFC 2308 §5). CNAMEs are followed inside the zones, as an authoritative server would.
UDP answers larger than the client's EDNS payload size (512 without EDNS, RFC 1035 §4.2.1) are
truncated with TC set, so the client retries over TCP (RFC 7766 §5).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from dnslib import (
    AAAA,
    CNAME,
    MX,
    PTR,
    QTYPE,
    RCODE,
    RD,
    RR,
    SOA,
    TXT,
    A,
    DNSError,
    DNSLabel,
    DNSRecord,
)
from dnslib.server import DNSHandler, DNSLogger, TCPServer, UDPServer

log = logging.getLogger("fakedns")

TTL = 300
NEGATIVE_TTL = 60  # SOA minimum: how long resolvers cache NXDOMAIN / NODATA (RFC 2308 §5)
BEHAVIOURS = ("SERVFAIL", "TIMEOUT")


@dataclass(frozen=True)
class Query:
    """One question the server received, for tests that assert on traffic (caching, TCP)."""

    name: str
    rtype: str
    protocol: str  # "udp" | "tcp"


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _rdata(rtype: str, value: str) -> RD:
    """Build the record data for one zone line; raise ValueError on a bad value."""
    try:
        if rtype == "A":
            return A(str(ipaddress.IPv4Address(value)))
        if rtype == "AAAA":
            return AAAA(str(ipaddress.IPv6Address(value)))
        if rtype == "MX":
            pref, host = value.split()
            return MX(DNSLabel(host), int(pref))
        if rtype in ("CNAME", "PTR"):
            return (CNAME if rtype == "CNAME" else PTR)(DNSLabel(value))
        if rtype == "TXT":
            data = value.encode()
            # A TXT string holds at most 255 octets (RFC 1035 §3.3.14); longer text is split.
            return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])
    except (ValueError, DNSError) as exc:
        raise ValueError(f"bad {rtype} value {value!r}: {exc}") from exc
    raise ValueError(f"unsupported record type {rtype!r}")


class _Drop(DNSError):
    """Raised to send no reply; dnslib's handler swallows DNSError after logging it."""


class _Handler(DNSHandler):
    server: Any  # dnslib's socketserver, carrying .fake

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.fake.respond(request, self.protocol)
        if reply is None:
            raise _Drop("TIMEOUT: not answering")
        wire = bytes(reply.pack())
        if self.protocol == "udp":
            limit = 512  # RFC 1035 §4.2.1, unless the client advertised more with EDNS
            for rr in request.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, rr.rclass)  # RFC 6891 §6.2.3: payload size in CLASS
            if len(wire) > limit:
                # Keep the question: resolvers match replies to queries by it.
                truncated = request.reply()
                truncated.header.tc = 1
                wire = bytes(truncated.pack())
        return wire


class FakeDNS:
    """A DNS server on ``address``:``port`` (0 = an ephemeral port, the same for UDP and TCP)."""

    def __init__(
        self,
        zone_files: Iterable[str | Path] = (),
        *,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.address = address
        self.port = port
        self._records: dict[str, list[tuple[str, RD]]] = {}
        self._behaviour: dict[tuple[str, str], str] = {}  # (name, type or "*") -> behaviour
        self._lock = threading.Lock()
        self._queries: list[Query] = []
        self._servers: list[UDPServer | TCPServer] = []
        self._threads: list[threading.Thread] = []
        for path in zone_files:
            self.load(path)

    # --- zone data ------------------------------------------------------------------------------
    def load(self, path: str | Path) -> None:
        """Add every record of a zone file; errors name the file and line."""
        for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            try:
                if len(parts) < 2:
                    raise ValueError("expected '<name> <type> <value>'")
                self.add(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None

    def add(self, name: str, rtype: str, value: str = "") -> None:
        """Add a record, or a behaviour (``SERVFAIL`` / ``TIMEOUT``) for ``name``: for all query
        types, or for those listed in ``value`` (``"A AAAA"``)."""
        rtype = rtype.upper()
        # An IP address as the name stands for its reverse name (x.x.x.x.in-addr.arpa).
        with contextlib.suppress(ValueError):
            name = ipaddress.ip_address(name).reverse_pointer
        key = _norm(name)
        with self._lock:
            if rtype in BEHAVIOURS:
                for qtype in value.upper().split() or ["*"]:
                    self._behaviour[(key, qtype)] = rtype
            else:
                self._records.setdefault(key, []).append((rtype, _rdata(rtype, value.strip())))

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def count(self, name: str, rtype: str | None = None) -> int:
        """How many queries for ``name`` (and ``rtype``, if given) the server has received."""
        key = _norm(name)
        return sum(1 for q in self.queries if q.name == key and rtype in (None, q.rtype))

    @property
    def nameserver(self) -> tuple[str, int]:
        """(address, port), as ``Resolver(nameservers=[...])`` wants it."""
        return (self.address, self.port)

    # --- answering ------------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        # A name with nothing of its own but names below it (an empty non-terminal) exists:
        # it answers NODATA, not NXDOMAIN (RFC 8020 §2).
        return name in self._records or any(n.endswith("." + name) for n in self._records)

    def respond(self, request: DNSRecord, protocol: str) -> DNSRecord | None:
        """The reply to ``request``, or None to stay silent."""
        qname = _norm(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self._queries.append(Query(qname, qtype, protocol))
            behaviour = self._behaviour.get((qname, qtype)) or self._behaviour.get((qname, "*"))
            if behaviour == "TIMEOUT":
                return None
            reply = request.reply()
            if behaviour == "SERVFAIL":
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            name, seen = qname, set()
            while True:
                records = self._records.get(name, [])
                if not records and not self._exists(name):
                    # After a CNAME the rcode is that of the last name in the chain (RFC 6604 §2).
                    reply.header.rcode = RCODE.NXDOMAIN
                    break
                cname = next((rd for t, rd in records if t == "CNAME"), None)
                if cname is not None and qtype != "CNAME" and name not in seen:
                    seen.add(name)
                    reply.add_answer(RR(name + ".", QTYPE.CNAME, rdata=cname, ttl=TTL))
                    name = _norm(str(cname.label))
                    continue
                for rtype, rd in records:
                    if rtype == qtype:
                        reply.add_answer(RR(name + ".", getattr(QTYPE, rtype), rdata=rd, ttl=TTL))
                break
            if not reply.rr:
                reply.add_auth(self._soa(name))
            return reply

    @staticmethod
    def _soa(name: str) -> RR:
        # The top label stands in for the zone apex: enough for a resolver to find an SOA above
        # the name and take its negative TTL.
        apex = name.rsplit(".", 1)[-1] + "."
        times = (1, 3600, 600, 86400, NEGATIVE_TTL)  # serial refresh retry expire minimum
        return RR(apex, QTYPE.SOA, rdata=SOA("ns." + apex, "hostmaster." + apex, times),
                  ttl=NEGATIVE_TTL)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeDNS:
        for attempt in range(20):
            udp = UDPServer((self.address, self.port), _Handler)
            port = udp.server_address[1]
            try:
                tcp = TCPServer((self.address, port), _Handler)
            except OSError:
                udp.server_close()
                # The ephemeral UDP port's TCP twin is taken: try another port, unless the
                # caller asked for this one.
                if self.port or attempt == 19:
                    raise
                continue
            break
        self.port = port
        quiet = DNSLogger(prefix=False, logf=log.debug)
        for proto, server in (("udp", udp), ("tcp", tcp)):
            server.fake = self  # type: ignore[attr-defined]
            server.resolver = None  # type: ignore[attr-defined]  # unused: _Handler answers
            server.logger = quiet  # type: ignore[attr-defined]
            # A short poll interval keeps stop() fast (shutdown waits for the poll to notice).
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.01},
                name=f"fakedns-{proto}-{port}", daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()  # dnslib's own stop() leaves the socket open
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeDNS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """Run the server in the foreground, for poking at it with ``dig -p PORT @127.0.0.1``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("zones", nargs="+", type=Path)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5353)
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG, format="%(message)s")
    with FakeDNS(args.zones, address=args.address, port=args.port) as server:
        print(f"fakedns listening on {server.address}:{server.port} (udp, tcp)", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
