"""Filters over transaction records, shared by ``mailferry trace`` and the web UI.

Where it sits: after reconstruct.py, before render.py / report.py. A :class:`Query` is built once
from the user's options and tested against each record (a dict, see docs/tracking.md).
It must not: read logs, change records, or know how they are displayed.

Address patterns (``--from``, ``--to``), case-insensitive:
``alice@example.org`` the whole address; ``alice@`` a local part; ``@example.net`` a domain;
anything with ``*`` / ``?`` a glob; ``<>`` the null sender; anything else a substring.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# What a user may type for --status, and which record statuses it means.
STATUS_ALIASES: dict[str, frozenset[str]] = {
    "delivered": frozenset({"delivered"}),
    "deferred": frozenset({"deferred"}),
    "failed": frozenset({"failed"}),
    "bounced": frozenset({"failed"}),
    "rejected": frozenset({"rejected", "refused"}),
    "refused": frozenset({"refused"}),
    "aborted": frozenset({"aborted"}),
    "queued": frozenset({"queued"}),
    "incomplete": frozenset({"incomplete"}),
    "no-mail": frozenset({"no-mail"}),
    "deleted": frozenset({"deleted"}),  # removed by an administrator (mailferry queue delete)
}
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_DATE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{1,2}:\d{2}(?::\d{2})?))?$")


class QueryError(ValueError):
    """An option value that cannot be used as a filter (the message says which and why)."""


def address_matcher(pattern: str):
    """``pattern`` → a function address → bool (rules in the module docstring)."""
    p = pattern.strip().lower().strip("<>")
    if not p:  # "<>": the null sender of bounces
        return lambda a: a == ""
    if any(c in p for c in "*?["):
        return lambda a: fnmatch.fnmatchcase(a.lower(), p)
    if p.startswith("@"):
        return lambda a: a.lower().endswith(p)
    if p.endswith("@"):
        return lambda a: a.lower().startswith(p)
    if "@" in p:
        return lambda a: a.lower() == p
    return lambda a: p in a.lower()


def _clock(value: str, option: str) -> str | tuple[str, str]:
    """``10:00`` → ``"10:00:00"`` (a time of any day); ``2026-11-28 10:00`` → (date, time)."""
    v = value.strip()
    m = _TIME_RE.match(v)
    if m:
        return f"{int(m[1]):02d}:{m[2]}:{m[3] or '00'}"
    m = _DATE_RE.match(v)
    if m:
        t = _clock(m[2], option) if m[2] else "00:00:00"
        return (m[1], t)  # type: ignore[return-value]
    raise QueryError(f"{option} {value!r}: use HH:MM[:SS] or YYYY-MM-DD[ HH:MM[:SS]]")


def _split_iso(stamp: str | None) -> tuple[str, str]:
    """``2026-11-28T10:25:03`` → ("2026-11-28", "10:25:03"); an undated ``10:25:03`` → ("", …)."""
    if not stamp:
        return "", ""
    if "T" in stamp:
        d, _, t = stamp.partition("T")
        return d, t[:8]
    return "", stamp[:8]


@dataclass
class Query:
    sender: str | None = None
    rcpt: str | None = None
    ip: str | None = None
    msgid: str | None = None
    since: str | None = None
    until: str | None = None
    status: str | None = None
    _checks: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        checks = self._checks
        if self.sender is not None:
            m = address_matcher(self.sender)
            checks.append(lambda r: r["sender"] is not None and m(r["sender"]))
        if self.rcpt is not None:
            m2 = address_matcher(self.rcpt)
            checks.append(lambda r: any(m2(x["address"]) for x in r["recipients"]))
        if self.ip is not None:
            try:
                net = ipaddress.ip_network(self.ip.strip(), strict=False)
            except ValueError as e:
                raise QueryError(f"--ip {self.ip!r}: not an address or network") from e
            checks.append(lambda r: any(_in(net, a) for a in _ips(r)))
        if self.msgid is not None:
            want = self.msgid.strip().upper()
            checks.append(lambda r: want in _ids(r))
        if self.status is not None:
            wanted = STATUS_ALIASES.get(self.status.strip().lower())
            if wanted is None:
                raise QueryError(f"--status {self.status!r}: one of {', '.join(STATUS_ALIASES)}")
            # A record matches by its own status or any recipient's; "deferred" also matches a
            # message deferred once and delivered later (a log is history: "what was delayed?").
            ever_deferred = "deferred" in wanted
            checks.append(lambda r: r["status"] in wanted
                          or any(x["status"] in wanted or (ever_deferred and x["deferrals"])
                                 for x in r["recipients"]))
        for value, option, after in ((self.since, "--since", True),
                                     (self.until, "--until", False)):
            if value is not None:
                checks.append(_time_check(_clock(value, option), after))

    def matches(self, record: dict) -> bool:
        return all(check(record) for check in self._checks)

    def filter(self, records) -> Iterator[dict]:
        return (r for r in records if self.matches(r))

    @property
    def empty(self) -> bool:
        return not self._checks


def _time_check(bound: str | tuple[str, str], after: bool):
    """--since keeps stories still going at that time (they end after it), --until those begun
    by then: together, the stories with something logged inside the window."""
    def check(r: dict) -> bool:
        d, t = _split_iso((r["end"] or r["start"]) if after else (r["start"] or r["end"]))
        if not t:
            return False
        if isinstance(bound, tuple):
            if not d:  # an undated log: only the time of day can be compared
                key, ref = t, bound[1]
            else:
                key, ref = (d, t), bound  # type: ignore[assignment]
        else:
            key, ref = t, bound
        return key >= ref if after else key <= ref  # type: ignore[operator]
    return check


def _in(net, addr: str | None) -> bool:
    if not addr:
        return False
    try:
        return ipaddress.ip_address(addr) in net
    except ValueError:
        return False


def _ips(r: dict) -> Iterator[str | None]:
    """The client's address, and the remote servers' addresses a delivery tried."""
    if r["session"]:
        yield r["session"]["peer"]
    for d in r["deliveries"]:
        yield d["ip"]
        for a in d["session"]["attempts"]:
            yield a["ip"]


def _ids(r: dict) -> set[str]:
    ids = {r["msgid"], r["bounce_of"]}
    if r["bounce"]:
        ids.add(r["bounce"]["msgid"])
    for x in r["recipients"]:
        ids.add(x["queued_as"])
    ids.discard(None)
    return {i.upper() for i in ids}
