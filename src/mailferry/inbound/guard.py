"""Intrusion prevention, the deciding part: count what clients do wrong and say when to block.

Sliding-window counters per (client IP, reason) with thresholds from ``[protection]``; when a
counter reaches its threshold, :meth:`Guard.count` returns the :class:`Block` to impose (the
session writes it to the block list and closes). Per-user / per-sender message rates are counted
here too; they refuse (450), they never block.

Pure logic: no sockets, files or logs, and time comes from an injected clock, so tests need no
sleeping. Memory is bounded (clients come from anywhere): at most ``max_tracked`` keys per kind
of counter, the least recently active dropped first.

Who is exempt is the caller's decision (clients in [relay] networks are never counted; see
inbound/session.py), because the caller already knows it at no cost.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mailferry.config import ProtectionConfig

MAX_TRACKED = 20_000  # client IPs (and users, senders) with live counters
CONNRATE_WINDOW = 60.0  # max_connections_per_minute counts over one minute, whatever `window` is


class Reason(StrEnum):
    """Why a client is blocked: short codes for the log, the CLI and the 554 reply."""

    CONNRATE = "CONNRATE"
    AUTHFAIL = "AUTHFAIL"
    UNKNOWNRCPT = "UNKNOWNRCPT"
    RELAY = "RELAY"
    RSET = "RSET"
    OVERSIZE = "OVERSIZE"
    PREGREET = "PREGREET"
    MANUAL = "MANUAL"  # added by an administrator (mailferry block add)


# What the events of each reason are, for "20 relay attempts in 600 s" (singular, plural).
_EVENTS = {
    Reason.CONNRATE: ("connection", "connections"),
    Reason.AUTHFAIL: ("failed AUTH attempt", "failed AUTH attempts"),
    Reason.UNKNOWNRCPT: ("unknown recipient", "unknown recipients"),
    Reason.RELAY: ("relay attempt", "relay attempts"),
    Reason.RSET: ("RSET command", "RSET commands"),
    Reason.OVERSIZE: ("oversize message", "oversize messages"),
    Reason.PREGREET: ("pregreet", "pregreets"),
}


@dataclass(frozen=True, slots=True)
class Block:
    ip: str
    reason: str  # a Reason value (kept a str: the block list may hold codes of newer versions)
    detail: str  # "20 relay attempts in 600 s", or the administrator's text
    created: float  # Unix time
    expires: float  # Unix time

    def active(self, now: float) -> bool:
        return now < self.expires


def canonical_ip(text: str) -> str:
    """The key of a client address: ``::ffff:192.0.2.7`` is 192.0.2.7, a zone index is dropped,
    IPv6 is compressed. Raises ValueError for text that is no IP address."""
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def _seconds(value: float) -> str:
    return f"{value:g}"


class SlidingWindow:
    """Events per key within the last ``window`` seconds; exact (timestamps, at most ``limit``
    per key: only the limit-th most recent event decides), bounded in keys (LRU)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float],
                 max_keys: int = MAX_TRACKED) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def hit(self, key: str) -> int:
        """Record one event; returns how many events the key has in the window, this one
        included (never more than ``limit``)."""
        now = self._clock()
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self._max_keys:
                self._events.popitem(last=False)  # the least recently active key
            events = self._events[key] = deque(maxlen=self.limit)
        else:
            self._events.move_to_end(key)
        self._expire(events, now)
        events.append(now)
        return len(events)

    def count(self, key: str) -> int:
        events = self._events.get(key)
        if events is None:
            return 0
        self._expire(events, self._clock())
        return len(events)

    def forget(self, key: str) -> None:
        self._events.pop(key, None)

    def _expire(self, events: deque[float], now: float) -> None:
        horizon = now - self.window
        while events and events[0] <= horizon:
            events.popleft()


class Guard:
    """The per-IP rules and message rate limits of one server."""

    def __init__(self, config: ProtectionConfig, clock: Callable[[], float] = time.time,
                 max_tracked: int = MAX_TRACKED) -> None:
        self.config = config
        self._clock = clock
        limits = {
            Reason.CONNRATE: (config.max_connections_per_minute, CONNRATE_WINDOW),
            Reason.AUTHFAIL: (config.max_auth_failures, config.window),
            Reason.UNKNOWNRCPT: (config.max_unknown_recipients, config.window),
            Reason.RELAY: (config.max_relay_attempts, config.window),
            Reason.RSET: (config.max_rsets, config.window),
            Reason.OVERSIZE: (config.max_oversize, config.window),
            Reason.PREGREET: (config.max_pregreets, config.window),
        }
        # Only the rules that are on get a counter: an off rule costs one dict miss.
        self._rules = {reason: SlidingWindow(limit, window, clock, max_tracked)
                       for reason, (limit, window) in limits.items() if limit > 0}
        self._users = SlidingWindow(config.max_messages_per_user, config.window, clock,
                                    max_tracked) if config.max_messages_per_user else None
        self._senders = SlidingWindow(config.max_messages_per_sender, config.window, clock,
                                      max_tracked) if config.max_messages_per_sender else None
        self.counts_messages = self._users is not None or self._senders is not None

    def enabled(self, reason: Reason) -> bool:
        return reason in self._rules

    def count(self, ip: str, reason: Reason) -> Block | None:
        """Count one event of ``reason`` from ``ip``; the Block to impose when the count
        reaches the threshold within the window (the IP's counters then start again)."""
        rule = self._rules.get(reason)
        if rule is None:
            return None
        if rule.hit(ip) < rule.limit:
            return None
        for other in self._rules.values():
            other.forget(ip)
        now = self._clock()
        what = _EVENTS[reason][rule.limit != 1]
        detail = f"{rule.limit} {what} in {_seconds(rule.window)} s"
        return Block(ip, reason.value, detail, now, now + self.config.block_time)

    def count_of(self, ip: str, reason: Reason) -> int:
        rule = self._rules.get(reason)
        return rule.count(ip) if rule is not None else 0

    def manual(self, ip: str, seconds: float | None = None, text: str = "") -> Block:
        now = self._clock()
        return Block(ip, Reason.MANUAL.value, text or "blocked by the administrator", now,
                     now + (self.config.block_time if seconds is None else seconds))

    # --- message rates (refused with 450, never blocked) ----------------------------------------
    def message_refusal(self, user: str | None, sender: str | None) -> str | None:
        """Why a new message from this user / sender must wait (None: it may go). ``user`` is
        the authenticated user, ``sender`` the MAIL FROM address (None where the limit does
        not apply)."""
        for key, rule, what in ((user, self._users, "user"), (sender, self._senders, "sender")):
            if key is not None and rule is not None and rule.count(key.lower()) >= rule.limit:
                return f"{what} {key} sent {rule.limit} messages in {_seconds(rule.window)} s"
        return None

    def message_sent(self, user: str | None, sender: str | None) -> None:
        """Count one accepted message against its user and sender."""
        if user is not None and self._users is not None:
            self._users.hit(user.lower())
        if sender is not None and self._senders is not None:
            self._senders.hit(sender.lower())

    def applies_to_user(self) -> bool:
        return self._users is not None

    def applies_to_sender(self) -> bool:
        return self._senders is not None
