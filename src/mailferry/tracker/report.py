"""``mailferry report``: a summary of a transaction log, in the spirit of Postfix's pflogsumm.

Where it sits: it consumes the records of reconstruct.py as they stream out (never a list of
them) and keeps counters only: totals, top senders / recipients / clients / domains, rejection
reasons, traffic per hour, delivery delays. :meth:`Report.as_dict` is the ``--json`` form;
:func:`render` is a plain-text table for a terminal.
It must not: read logs or print (the CLI does both).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

TOP = 10
_ADDRESS_RE = re.compile(r"<[^>]*>")


def reason_key(reply: str) -> str:
    """A reply with its addresses removed, so that the same refusal counts as one reason."""
    text = _ADDRESS_RE.sub("<…>", reply).strip()
    return re.sub(r"\s+", " ", text)[:120]


def _hour(stamp: str | None) -> str | None:
    """``2026-11-28T10:25:03`` → ``2026-11-28 10``; an undated ``10:25:03`` → ``10``."""
    if not stamp:
        return None
    return stamp[:13].replace("T", " ") if "T" in stamp else stamp[:2]


def percentile(counts: Mapping[int, int], p: float) -> int | None:
    """Nearest-rank percentile (p in 0..100) of values given as value → how many times; None
    for no values. (A histogram: delays are whole seconds, so memory holds one entry per
    distinct delay, not one per delivery.)"""
    n = sum(counts.values())
    if not n:
        return None
    k = max(0, min(n - 1, round(p / 100 * n + 0.5) - 1))  # the rank, from 0, in sorted order
    for value in sorted(counts):
        k -= counts[value]
        if k < 0:
            return value
    return None  # not reached: the ranks add up to n


class Report:
    """Counters fed one record at a time (:meth:`add`)."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.senders: Counter[str] = Counter()
        self.authenticated_users: Counter[str] = Counter()  # messages received per AUTH user
        self.recipients: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()
        self.sender_domains: Counter[str] = Counter()
        self.recipient_domains: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.received_per_hour: Counter[str] = Counter()
        self.delivered_per_hour: Counter[str] = Counter()
        self.delays: Counter[int] = Counter()  # delay in seconds → deliveries

    def add(self, r: dict) -> None:
        t = self.totals
        sess = r["session"]
        if r["type"] == "session":
            t["sessions_without_mail"] += 1
            if r["status"] == "rejected":
                t["connections_rejected"] += 1
                self.rejections[reason_key(r["reason"] or "?")] += 1
            if sess:
                self.clients[sess["peer"]] += 1
            return
        if sess:
            self.clients[sess["peer"]] += 1
        status = r["status"]
        received = sess is not None and status not in ("rejected", "aborted", "incomplete")
        if status == "rejected":
            t["messages_rejected"] += 1
            # Refused at RCPT: each refusal is counted with its recipient, not twice.
            if not any(x["status"] == "refused" and x["reply"] == r["reason"]
                       for x in r["recipients"]):
                self.rejections[reason_key(r["reason"] or "?")] += 1
        elif status == "aborted":
            t["transactions_aborted"] += 1
        elif status == "incomplete":
            t["transactions_incomplete"] += 1
        if received:
            t["messages_received"] += 1
            t["bytes_received"] += r["size"] or 0
            sender = r["sender"]
            key = sender if sender else "<>"
            self.senders[key] += 1
            self.sender_domains[key.rpartition("@")[2] or "<>"] += 1
            hour = _hour(r["start"])
            if hour:
                self.received_per_hour[hour] += 1
            # How the session stood at MAIL FROM (records.py): encrypted, logged in as whom.
            if r["tls"]:
                t["messages_tls"] += 1
            user = r["auth_user"]
            if user:
                t["messages_authenticated"] += 1
                self.authenticated_users[user] += 1
        for x in r["recipients"]:
            self._recipient(x, received)
        if r["bounce"]:
            t["bounces_sent"] += 1

    def _recipient(self, x: dict, received: bool) -> None:
        t = self.totals
        st = x["status"]
        if st in ("refused", "rejected", "tempfailed"):
            t["recipients_refused"] += 1
            if x["reply"] and st == "refused":
                self.rejections[reason_key(x["reply"])] += 1
            return
        if received:
            addr = x["address"].lower()
            self.recipients[addr] += 1
            self.recipient_domains[addr.rpartition("@")[2]] += 1
        if st in ("delivered", "deferred", "failed", "queued"):
            t[f"recipients_{st}"] += 1
        if x["deferrals"]:
            t["deferrals"] += x["deferrals"]
        if st == "failed" and x["remote_reply"]:
            self.failures[reason_key(x["remote_reply"])] += 1
        if st == "delivered" and x["attempts"]:
            hour = _hour(x["finished"])
            if hour:
                self.delivered_per_hour[hour] += 1
            if x["delay"] is not None:
                self.delays[x["delay"]] += 1

    def as_dict(self, stats: dict | None = None) -> dict:
        def top(c: Counter[str]) -> list[list]:
            return [[k, n] for k, n in c.most_common(TOP)]
        d = self.delays
        return {
            "totals": dict(sorted(self.totals.items())),
            "top_senders": top(self.senders),
            "top_authenticated_users": top(self.authenticated_users),
            "top_recipients": top(self.recipients),
            "top_clients": top(self.clients),
            "top_sender_domains": top(self.sender_domains),
            "top_recipient_domains": top(self.recipient_domains),
            "rejection_reasons": top(self.rejections),
            "delivery_failures": top(self.failures),
            "per_hour": {h: {"received": self.received_per_hour[h],
                             "delivered": self.delivered_per_hour[h]}
                         for h in sorted(set(self.received_per_hour) |
                                         set(self.delivered_per_hour))},
            "delivery_delay": {"count": sum(d.values()), "p50": percentile(d, 50),
                               "p95": percentile(d, 95), "max": max(d) if d else None},
            "log": stats or {},
        }


def render(data: dict) -> str:
    """The report as plain-text tables (what a terminal shows; no colour, no wrapping)."""
    out: list[str] = []
    log = data.get("log") or {}
    t = data["totals"]
    out.append("Totals")
    rows = [("sessions served", log.get("sessions_in", 0)),
            ("delivery sessions", log.get("sessions_out", 0)),
            ("messages received", t.get("messages_received", 0)),
            ("messages received over TLS", t.get("messages_tls", 0)),
            ("messages received authenticated", t.get("messages_authenticated", 0)),
            ("bytes received", t.get("bytes_received", 0)),
            ("recipients delivered", t.get("recipients_delivered", 0)),
            ("recipients deferred (still)", t.get("recipients_deferred", 0)),
            ("recipients bounced", t.get("recipients_failed", 0)),
            ("recipients queued (no delivery seen)", t.get("recipients_queued", 0)),
            ("deferrals (attempts)", t.get("deferrals", 0)),
            ("bounces sent", t.get("bounces_sent", 0)),
            ("messages rejected", t.get("messages_rejected", 0)),
            ("recipients refused", t.get("recipients_refused", 0)),
            ("connections rejected", t.get("connections_rejected", 0)),
            ("transactions aborted", t.get("transactions_aborted", 0)),
            ("incomplete sessions", log.get("incomplete", 0)),
            ("unreadable lines", log.get("unparsed", 0))]
    out += _table(rows)
    for title, key in (("Top senders", "top_senders"),
                       ("Top authenticated users", "top_authenticated_users"),
                       ("Top recipients", "top_recipients"),
                       ("Top client IPs", "top_clients"),
                       ("Top sender domains", "top_sender_domains"),
                       ("Top recipient domains", "top_recipient_domains"),
                       ("Rejection reasons", "rejection_reasons"),
                       ("Delivery failures", "delivery_failures")):
        if data[key]:
            out += ["", title, *_table([(n, k) for k, n in data[key]], right_first=True)]
    if data["per_hour"]:
        out += ["", "Per hour            received  delivered"]
        out += [f"  {h:<16}  {v['received']:>8}  {v['delivered']:>9}"
                for h, v in data["per_hour"].items()]
    dd = data["delivery_delay"]
    if dd["count"]:
        out += ["", "Delivery delay (relayed recipients, receipt → remote 250)",
                f"  p50 {dd['p50']} s   p95 {dd['p95']} s   max {dd['max']} s   "
                f"({dd['count']} deliveries)"]
    return "\n".join(out) + "\n"


def _table(rows: list[tuple], right_first: bool = False) -> list[str]:
    if right_first:
        w = max(len(str(a)) for a, _ in rows)
        return [f"  {a!s:>{w}}  {b}" for a, b in rows]
    w = max(len(str(a)) for a, _ in rows)
    return [f"  {a!s:<{w}}  {b:>10}" for a, b in rows]
