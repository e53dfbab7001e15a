"""Policy for the receiving side: who may send, to whom, from where. Decisions only.

Each check returns a Verdict: the reply to send (from the reply catalogue) and, when a rule looked
at evidence, a free-text line for the transaction log saying which rule decided and on what.
Must not: do socket I/O or write logs itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mailferry import reply
from mailferry.address import Address
from mailferry.config import Config
from mailferry.reply import Reply
from mailferry.verify.sender import check_client_rdns, check_sender_domain
from mailferry.verify.users import Directory


@dataclass(frozen=True, slots=True)
class Verdict:
    reply: Reply
    evidence: str | None = None
    targets: tuple[str, ...] = ()  # for an accepted local recipient: its final mailboxes
    forward: bool = False  # accepted for relay to another domain
    name: str | None = None  # for the client check: its forward-confirmed reverse DNS name

    @property
    def accepted(self) -> bool:
        return self.reply.is_positive


# Local-part characters that older MTAs treat as routing: user%other@local ("percent hack"),
# other!user@local (UUCP bang path). Accepting them is how open relays were made.
_ROUTING_CHARS = ("%", "!", "@")


class Policy:
    def __init__(self, config: Config, directory: Directory, resolver: object) -> None:
        self._config = config
        self._directory = directory
        self._resolver = resolver
        self._networks = config.relay.networks
        self._trusted_cache: dict[str, bool] = {}
        # Password checks get their own threads: a flood of logins (argon2, tens of ms each)
        # must not queue ahead of the queue's fsyncs in the loop's default executor.
        self._login_pool: ThreadPoolExecutor | None = None

    def client_trusted(self, ip: str) -> bool:
        """May this client relay by its address? ([relay] networks; an authenticated session
        may relay too, the session passes ``trusted`` for it.)"""
        known = self._trusted_cache.get(ip)
        if known is None:
            known = self._trusted_cache[ip] = self._in_networks(ip)
            if len(self._trusted_cache) > 10_000:  # bounded: clients come from anywhere
                self._trusted_cache.clear()
        return known

    def _in_networks(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks)

    def check_rcpt(self, address: Address, *, trusted: bool) -> Verdict:
        local_part = address.local.strip('"') if address.quoted else address.local
        if address.source_route or any(c in local_part for c in _ROUTING_CHARS):
            # Refused for every client: these forms only exist to make a server forward mail
            # somewhere its domain part does not say.
            return Verdict(reply.RELAY_DENIED,
                           f"relay check: {address} uses source routing or a routing character"
                           " in the local part - refused")
        domain = address.domain
        if domain == "":  # RFC 5321 §4.5.1 <Postmaster> without a domain
            domain = self._primary_domain()
            address = Address(address.local, domain)
        if self._directory.is_local_domain(domain):
            targets = self._directory.resolve(address.key)
            if not targets:
                return Verdict(reply.NO_SUCH_USER, f"recipient check: {address.key} does not exist")
            return Verdict(reply.recipient_ok(str(address), forward=False), None, targets)
        if trusted:
            return Verdict(reply.recipient_ok(str(address), forward=True), None, (address.key,),
                           forward=True)
        return Verdict(reply.RELAY_DENIED,
                       f"relay check: {domain} is not local and the client is not in"
                       " [relay] networks - refused")

    async def check_login(self, username: str, password: str) -> bool:
        """AUTH: the user directory's argon2 check, in a worker thread (it takes tens of ms and
        must not stall the other sessions). Constant time whether or not the user exists."""
        if self._login_pool is None:
            self._login_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="login")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._login_pool, self._directory.check_password,
                                          username, password)

    def check_auth_sender(self, user: str, address: Address | None) -> Verdict | None:
        """[policy] sender_must_match_auth: MAIL FROM of an authenticated session must be the
        user's own address or an alias that reaches the user. None when it is.

        The null sender is allowed (Postfix's reject_sender_login_mismatch does the same): it
        claims nobody's address, and refusing it would break a client sending a DSN."""
        if address is None:
            return None
        key = address.key
        if key == user or user in (self._directory.resolve(key) or ()):
            return None
        return Verdict(reply.SENDER_NOT_OWNED,
                       f"sender check: {address} is not an address of the authenticated user"
                       f" {user} - refused")

    def is_local(self, address: str) -> bool:
        """Is this (already resolved) mailbox delivered here? Alias targets may be remote."""
        return self._directory.is_local_domain(address.rpartition("@")[2])

    def _primary_domain(self) -> str:
        domains = self._directory.domains()
        return domains[0] if domains else self._config.server.hostname

    def sender_needs_check(self, address: Address | None) -> bool:
        """False for the null sender, a disabled check, an address literal or a local domain."""
        if address is None or not self._config.policy.sender_domain_check:
            return False
        return not (address.domain.startswith("[")
                    or self._directory.is_local_domain(address.domain))

    async def check_sender(self, address: Address | None) -> Verdict | None:
        """None when no check applies (see sender_needs_check)."""
        if address is None or not self.sender_needs_check(address):
            return None
        decision = await check_sender_domain(self._resolver, address.domain)
        if decision.action == "accept":
            return Verdict(reply.sender_ok(str(address)), decision.evidence)
        if decision.action == "tempfail":
            return Verdict(reply.SENDER_DOMAIN_TEMPFAIL, decision.evidence)
        return Verdict(reply.SENDER_DOMAIN_UNKNOWN, decision.evidence)

    async def check_client(self, ip: str) -> Verdict | None:
        """The client's reverse DNS ([policy] client_rdns). None when the check is off."""
        mode = self._config.policy.client_rdns
        if mode == "off":
            return None
        result = await check_client_rdns(self._resolver, ip)
        if mode == "reject" and not result.confirmed:
            if result.tempfail:
                return Verdict(reply.r(450, "4.7.25", "Client host rejected: reverse DNS"
                                       " lookup failed, try again"), result.evidence)
            return Verdict(reply.CLIENT_RDNS_REJECT, result.evidence + " - rejected")
        return Verdict(reply.OK, result.evidence, name=result.name if result.confirmed else None)
