"""Prometheus metrics: one ``Metrics`` object per daemon, with its own registry.

Where it sits: ``daemon.py`` builds one ``Metrics`` and hands it to the components that count
(the inbound sessions via ``ServerContext``, the local and remote runners, outbound delivery, the
DNS resolver). Each of them takes it as an optional argument: a component given none counts
nothing and works as before. The HTTP side serves ``registry`` (``prometheus_client``'s own
exposition, e.g. ``make_asgi_app(registry=metrics.registry)``); ``render()`` gives the same text.

Two kinds of figures:
- events (sessions ended, messages received, deliveries, rejections, DNS lookups, TLS sessions,
  blocks) are counters incremented where they happen: one ``inc()`` on a label child looked up
  in a dict, never ``labels()`` with string formatting on the hot path;
- state (queue size by state, oldest queued message, open sessions) is computed at scrape time by
  a collector that calls the callbacks given to ``watch_queue`` / ``watch_sessions``, so no gauge
  has to be kept in step with the queue by hand.

Label values come from small fixed sets (listener kinds, outcomes, reasons, DNS types): never an
IP address, a domain or a mail address, which would make one series per client.
Every metric is documented in docs/metrics.md.

Must not: decide anything, do I/O at event time, or raise into the mail flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from mailferry.ids import message_time

if TYPE_CHECKING:
    from mailferry.reply import Reply

# --- label values -----------------------------------------------------------------------------
# How an inbound session ended (mailferry_sessions_total{outcome}), first match wins:
REFUSED = "refused"  # turned away at connect (connection limits), never served
ACCEPTED_MAIL = "accepted_mail"  # at least one message accepted (250 after DATA)
TIMEOUT = "timeout"  # we closed it: idle or DATA timeout
SHUTDOWN = "shutdown"  # we closed it: the server was stopping
ERROR = "error"  # lost mid-DATA, reset by the peer, or an internal error answered 451
NO_MAIL = "no_mail"  # ended by QUIT or by the client closing, with no message accepted
SESSION_OUTCOMES = (REFUSED, ACCEPTED_MAIL, TIMEOUT, SHUTDOWN, ERROR, NO_MAIL)

LISTENER_KINDS = ("smtp", "submission", "smtps")
CHANNELS = ("local", "remote")  # local: Maildir; remote: SMTP to another server
DELIVERY_RESULTS = ("delivered", "deferred", "failed")
BOUNCE_KINDS = ("failure", "delay")
DNS_TYPES = ("MX", "A", "AAAA", "PTR")
DNS_RESULTS = ("ok", "nxdomain", "nodata", "tempfail")
QUEUE_STATES = ("local", "remote_active", "remote_waiting")

# Rejections by reason, from the reply's enhanced status code (RFC 3463): every refusal goes
# through the reply catalogue (reply.py), so its code says what was refused without the callers
# naming a reason at each of their refusal points.
REJECTION_REASONS = ("unknown_user", "relay_denied", "sender_domain", "client_rdns", "size",
                     "content", "syntax", "limits", "auth", "sender_not_owned", "rate_limit",
                     "blocked", "pregreet", "local_error", "other")
# By (code, enhanced code): the enhanced code alone says too little where one is shared
# (5.7.1 is a relay refusal with 554 but a sender not owned by the login with 553).
_REASON_BY_REPLY = {
    (553, "5.7.1"): "sender_not_owned",
    (450, "4.7.1"): "rate_limit",
    (554, "5.5.1"): "pregreet",
}
_REASON_BY_CODE = {
    "5.1.1": "unknown_user",
    "5.7.1": "relay_denied",
    "5.1.8": "sender_domain", "4.1.8": "sender_domain",
    "5.7.25": "client_rdns", "4.7.25": "client_rdns",
    "5.3.4": "size",
    "5.6.0": "content",
    "4.5.3": "limits",  # too many recipients
    # AUTH failed, required first, needs TLS, cancelled, or could not be checked (RFC 4954)
    "5.7.8": "auth", "5.7.0": "auth", "4.7.8": "auth", "5.7.11": "auth", "5.0.0": "auth",
    "4.7.0": "auth",
    "4.3.0": "local_error",
    "5.1.3": "syntax", "5.1.7": "syntax",  # bad recipient / sender address syntax
}
_BLOCKED_TEXT = "Access denied: your address is blocked"  # reply.client_blocked


# Delivery latency, from arrival (received_at) to delivery, per recipient: a Maildir write takes
# milliseconds, a relay seconds, a retried message hours, and a message expires after days.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                   4 * 3600.0, 12 * 3600.0, 86400.0)

QueueView = Callable[[], Iterable[tuple[str, str]]]  # → (message ID, queue state) pairs
SessionsView = Callable[[], Iterable[str]]  # → the listener kind of each open session


def rejection_reason(r: Reply) -> str | None:
    """The reason label for a refusal sent to a client, or None when it is not a rejection
    (a positive reply, or a 421 that ends the session: counted as the session's outcome)."""
    if r.code < 400 or r.code == 421:
        return None
    if _is_block(r):
        return "blocked"
    reason = _REASON_BY_REPLY.get((r.code, r.enhanced)) or _REASON_BY_CODE.get(r.enhanced)
    if reason is not None:
        return reason
    if r.enhanced[2:4] == "5.":  # X.5.Y: protocol — syntax, sequence, parameters
        return "syntax"
    return "other"


def _is_block(r: Reply) -> bool:
    """The refusal of a blocked client at connect (554 5.7.1, as a relay refusal)."""
    return r.enhanced == "5.7.1" and isinstance(r.text, str) and r.text.startswith(_BLOCKED_TEXT)


class Metrics:
    """The daemon's metrics. ``registry`` is its own, never the process-wide default, so that
    tests (and two daemons in one process) each get a fresh set."""

    def __init__(self, listeners: Iterable[str] = ("smtp",), *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.sessions = Counter(
            "mailferry_sessions_total", "Inbound SMTP sessions ended, by listener kind and outcome",
            ["listener", "outcome"], registry=reg)
        self.messages_received = Counter(
            "mailferry_messages_received_total",
            "Messages accepted (queued, 250 after DATA), by listener kind", ["listener"],
            registry=reg)
        self.received_bytes = Counter(
            "mailferry_received_bytes_total", "Size of the messages accepted, by listener kind",
            ["listener"], registry=reg)
        self.rejections = Counter(
            "mailferry_rejections_total",
            "Commands and messages refused with a 4xx/5xx reply (except 421), by reason",
            ["reason"], registry=reg)
        self.deliveries = Counter(
            "mailferry_deliveries_total",
            "Delivery attempt outcomes per recipient, by channel (local, remote) and result",
            ["channel", "result"], registry=reg)
        self.delivery_latency = Histogram(
            "mailferry_delivery_latency_seconds",
            "Time from a message's arrival to its delivery, per delivered recipient",
            ["channel"], buckets=LATENCY_BUCKETS, registry=reg)
        self.bounces = Counter(
            "mailferry_bounces_total", "Delivery status notifications sent, by kind",
            ["kind"], registry=reg)
        self.dns_lookups = Counter(
            "mailferry_dns_lookups_total",
            "DNS lookups (cache hits included), by record type and result; failures are"
            ' result="tempfail"', ["type", "result"], registry=reg)
        self.tls_sessions = Counter(
            "mailferry_tls_sessions_total", "TLS sessions established, by direction and version",
            ["direction", "version"], registry=reg)
        self.tls_failures = Counter(
            "mailferry_tls_failures_total", "TLS handshakes that failed, by direction",
            ["direction"], registry=reg)
        self.blocks = Counter(
            "mailferry_blocks_total", "Clients or connections blocked, by reason", ["reason"],
            registry=reg)
        self._state = _StateCollector()
        reg.register(self._state)
        if process:  # what the default registry would have: process_*, python_gc_*, python_info
            ProcessCollector(registry=reg)
            GCCollector(registry=reg)
            PlatformCollector(registry=reg)

        # Label children made once: the hot path does a dict lookup and one inc().
        listeners = tuple(dict.fromkeys((*listeners, "smtp")))
        self._listeners = listeners
        self._session_children = {(lk, o): self.sessions.labels(lk, o)
                                  for lk in listeners for o in SESSION_OUTCOMES}
        self._received = {lk: (self.messages_received.labels(lk), self.received_bytes.labels(lk))
                          for lk in listeners}
        self._rejected = {r: self.rejections.labels(r) for r in REJECTION_REASONS}
        self._reason_of: dict[tuple[int, str], str | None] = {}  # memo of rejection_reason
        self._delivery = {(c, r): self.deliveries.labels(c, r)
                          for c in CHANNELS for r in DELIVERY_RESULTS}
        self._latency = {c: self.delivery_latency.labels(c) for c in CHANNELS}
        self._bounces = {k: self.bounces.labels(k) for k in BOUNCE_KINDS}
        self._dns = {(t, r): self.dns_lookups.labels(t, r) for t in DNS_TYPES for r in DNS_RESULTS}
        for direction in ("inbound", "outbound"):
            self.tls_failures.labels(direction)

    # --- inbound --------------------------------------------------------------------------------
    def session_ended(self, listener: str, outcome: str) -> None:
        child = self._session_children.get((listener, outcome))
        if child is None:  # a listener kind not named at construction
            child = self._session_children[(listener, outcome)] = self.sessions.labels(
                listener, outcome)
        child.inc()

    def message_received(self, listener: str, size: int) -> None:
        pair = self._received.get(listener)
        if pair is None:
            pair = self._received[listener] = (self.messages_received.labels(listener),
                                               self.received_bytes.labels(listener))
        pair[0].inc()
        pair[1].inc(size)

    def rejected(self, r: Reply) -> None:
        """Count a refusal sent to a client (no-op for replies that are not rejections)."""
        key = (r.code, r.enhanced if not _is_block(r) else "blocked")
        try:
            reason = self._reason_of[key]
        except KeyError:
            reason = self._reason_of[key] = rejection_reason(r)
        if reason is not None:
            self._rejected[reason].inc()

    def blocked(self, reason: str) -> None:
        """A client or connection blocked (intrusion prevention). ``reason`` must come from a
        small fixed set chosen by the caller (e.g. "blocklist", "rate", "auth_failures")."""
        self.blocks.labels(reason).inc()

    def tls_session(self, direction: str, version: str) -> None:
        """A TLS session established: ``direction`` "inbound" or "outbound", ``version`` as
        ``SSLObject.version()`` says ("TLSv1.3")."""
        self.tls_sessions.labels(direction, version if version not in ("", "?") else "unknown"
                                 ).inc()

    def tls_failure(self, direction: str) -> None:
        self.tls_failures.labels(direction).inc()

    # --- delivery -------------------------------------------------------------------------------
    def delivered(self, channel: str, received_at: float, now: float | None = None) -> None:
        self._delivery[(channel, "delivered")].inc()
        latency = (now if now is not None else time.time()) - received_at
        self._latency[channel].observe(max(0.0, latency))

    def deferred(self, channel: str, count: int = 1) -> None:
        self._delivery[(channel, "deferred")].inc(count)

    def failed(self, channel: str, count: int = 1) -> None:
        self._delivery[(channel, "failed")].inc(count)

    def bounce(self, kind: str) -> None:
        self._bounces[kind].inc()

    # --- DNS --------------------------------------------------------------------------------------
    def dns_lookup(self, rdtype: str, result: str) -> None:
        child = self._dns.get((rdtype, result))
        if child is None:
            child = self._dns[(rdtype, result)] = self.dns_lookups.labels(rdtype, result)
        child.inc()

    # --- state, read at scrape time ---------------------------------------------------------------
    def watch_queue(self, view: QueueView) -> None:
        """``view()`` yields (message ID, state) for every queued message; state is one of
        QUEUE_STATES. Called at each scrape, on the thread that serves /metrics."""
        self._state.queue = view

    def watch_sessions(self, view: SessionsView) -> None:
        """``view()`` yields the listener kind of every open inbound session."""
        self._state.sessions = view
        self._state.listeners = self._listeners

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (what /metrics serves)."""
        return generate_latest(self.registry)


class _StateCollector:
    """Gauges computed when scraped, from the callbacks given to Metrics.watch_*."""

    def __init__(self) -> None:
        self.queue: QueueView | None = None
        self.sessions: SessionsView | None = None
        self.listeners: tuple[str, ...] = ()

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("mailferry_queue_messages", "Messages in the queue, by state",
                              labels=["state"]),
            GaugeMetricFamily("mailferry_queue_oldest_message_age_seconds",
                              "Age of the oldest message in the queue (0 when empty)"),
            GaugeMetricFamily("mailferry_sessions_open", "Inbound SMTP sessions open now",
                              labels=["listener"]),
        )

    def collect(self) -> Iterator[Metric]:
        queue, oldest, sessions = self._families()
        if self.queue is not None:
            counts = dict.fromkeys(QUEUE_STATES, 0)
            first = None
            seen: set[str] = set()
            for msgid, state in self.queue():
                if msgid in seen:  # between two states at the moment of the scrape
                    continue
                seen.add(msgid)
                counts[state] = counts.get(state, 0) + 1
                if first is None or msgid < first:  # IDs sort by arrival time
                    first = msgid
            for state, count in counts.items():
                queue.add_metric([state], count)
            age = 0.0
            if first is not None:
                arrived = message_time(first)
                if arrived is not None:
                    age = max(0.0, time.time() - arrived)
            oldest.add_metric([], age)
            yield queue
            yield oldest
        if self.sessions is not None:
            open_now = dict.fromkeys(self.listeners, 0)
            for kind in self.sessions():
                open_now[kind] = open_now.get(kind, 0) + 1
            for kind, count in open_now.items():
                sessions.add_metric([kind], count)
            yield sessions
