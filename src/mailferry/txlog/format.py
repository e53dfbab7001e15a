"""The transaction log syntax (IceWarp style) — the ONLY module that knows it, for writing and
reading.

A line is ``<peer> [<SID>] <HH:MM:SS> <body>`` (see docs/log-format.md). The writer builds lines
with plain string operations because this runs for every line of every session (the stdlib
``logging`` module costs ~60 µs a record); the reader parses them back with one regular expression.
No I/O here: file handling lives in writer.py and tracker/reader.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

SYSTEM_PEER = "SYSTEM"
SYSTEM_SID = "0000"
PEER_WIDTH = 15

# Bodies with a fixed meaning.
CONNECTED = "Connected"
DISCONNECTED = "Disconnected"
START_PROCESSING = "Start of mail processing"
SENT = ">>> "
RECEIVED = "<<< "
SUMMARY = "*** "
SECRET = "****"


class Kind(Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    SENT = "sent"  # ">>> line"
    RECEIVED = "received"  # "<<< line"
    BYTES_SENT = "bytes_sent"  # ">>> N bytes (overall data transfer speed=N B/s)"
    BYTES_RECEIVED = "bytes_received"
    START_PROCESSING = "start_processing"
    SUMMARY = "summary"  # "*** <from> <to> n size hh:mm:ss STATUS msgid"
    TEXT = "text"  # free text: DNS lookups, policy decisions, connection attempts, errors


STATUSES = ("OK", "DEFERRED", "FAILED", "REJECTED")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def prefix(peer: str, sid: str) -> str:
    """The constant start of every line of one session: padded peer and bracketed SID."""
    return f"{peer.ljust(PEER_WIDTH)} [{sid}] "


def line(peer: str, sid: str, clock: str, body: str) -> str:
    """One complete line, without the newline. ``clock`` is ``HH:MM:SS``."""
    return f"{prefix(peer, sid)}{clock} {body}"


def connected(local_ip: str | None = None) -> str:
    return f"{CONNECTED}, local IP={local_ip}" if local_ip else CONNECTED


def sent(text: str) -> str:
    return SENT + text


def received(text: str) -> str:
    return RECEIVED + text


def data_bytes(direction: str, nbytes: int, seconds: float) -> str:
    """``<<< N bytes (...)`` for data we received, ``>>> N bytes (...)`` for data we sent."""
    speed = int(nbytes / seconds) if seconds > 0 else nbytes
    return f"{direction} {nbytes} bytes (overall data transfer speed={speed} B/s)"


def hms(seconds: float) -> str:
    """Duration as ``hh:mm:ss`` (the ``***`` line and the 250 reply)."""
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def summary(sender: str, rcpt: str, count: int, size: int, duration: str, status: str,
            msgid: str) -> str:
    """The ``***`` body: one per recipient. ``sender``/``rcpt`` without angle brackets."""
    return f"*** <{sender}> <{rcpt}> {count} {size} {duration} {status} {msgid}"


def sanitize(text: str) -> str:
    """Make untrusted text safe for one log line: no CR/LF/NUL, non-printables escaped.

    A peer must never be able to forge a log line (log injection), so everything we log that came
    from the network goes through this.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
_TIME = r"\d{1,2}:\d{2}:\d{2}"
_FULL_DATE = r"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d{1,2}:\d{2}:\d{2}(?: [+-]\d{4})?"
_LINE_RE = re.compile(
    rf"^(?P<peer>\S+)(?P<pad> +)\[(?P<sid>[0-9A-Fa-f]{{1,8}})\] "
    rf"(?P<stamp>{_FULL_DATE}|{_TIME})(?: (?P<body>.*))?$"
)
_BYTES_RE = re.compile(r"^(?P<n>\d+) bytes \(overall data transfer speed=(?P<speed>\d+) B/s\)$")
_SUMMARY_RE = re.compile(
    r"^<(?P<sender>[^>]*)> <(?P<rcpt>[^>]*)> (?P<count>\d+) (?P<size>\d+) "
    r"(?P<duration>\d+:\d{2}:\d{2}) (?P<status>[A-Z]+)(?: (?P<msgid>\S+))?(?P<rest>.*)$"
)


@dataclass(frozen=True, slots=True)
class Summary:
    sender: str
    rcpt: str
    count: int
    size: int
    duration: str
    status: str
    msgid: str | None
    rest: str = ""  # anything after the message ID (kept so that format(parse(x)) == x)


@dataclass(frozen=True, slots=True)
class LogLine:
    peer: str
    sid: str
    stamp: str  # "HH:MM:SS" or the older full-date form
    body: str
    kind: Kind
    text: str = ""  # for SENT/RECEIVED: the protocol line; for TEXT: the body
    nbytes: int | None = None
    speed: int | None = None
    summary: Summary | None = None
    pad: str = " "  # the spacing after the peer, kept for exact round trips

    def format(self) -> str:
        head = f"{self.peer}{self.pad}[{self.sid}] {self.stamp}"
        return f"{head} {self.body}" if self.body else head


def classify(body: str) -> tuple[Kind, dict]:
    """What a body means. Returns the kind and its parsed fields."""
    if body.startswith(SENT) or body.startswith(RECEIVED) or body in (">>>", "<<<"):
        direction = body[:3]
        text = body[4:]
        m = _BYTES_RE.match(text)
        if m:
            kind = Kind.BYTES_SENT if direction == ">>>" else Kind.BYTES_RECEIVED
            return kind, {"nbytes": int(m["n"]), "speed": int(m["speed"])}
        return (Kind.SENT if direction == ">>>" else Kind.RECEIVED), {"text": text}
    if body.startswith(SUMMARY):
        m = _SUMMARY_RE.match(body[4:])
        if m:
            s = Summary(m["sender"], m["rcpt"], int(m["count"]), int(m["size"]), m["duration"],
                        m["status"], m["msgid"], m["rest"])
            return Kind.SUMMARY, {"summary": s}
        return Kind.TEXT, {"text": body}
    if body == CONNECTED or body.startswith(CONNECTED + ","):
        return Kind.CONNECTED, {"text": body}
    if body == DISCONNECTED:
        return Kind.DISCONNECTED, {}
    if body == START_PROCESSING:
        return Kind.START_PROCESSING, {}
    return Kind.TEXT, {"text": body}


def parse_line(raw: str) -> LogLine | None:
    """Parse one line (trailing newline allowed). None when it is not a transaction-log line."""
    raw = raw.rstrip("\r\n")
    m = _LINE_RE.match(raw)
    if m is None:
        return None
    body = m["body"] or ""
    kind, fields = classify(body)
    return LogLine(m["peer"], m["sid"], m["stamp"], body, kind, pad=m["pad"], **fields)


def local_ip_of(connected_body: str) -> str | None:
    """``Connected, local IP=1.2.3.4`` → ``1.2.3.4``."""
    _, sep, ip = connected_body.partition("local IP=")
    return ip.strip() or None if sep else None


# --------------------------------------------------------------------------------------------
# Reading helpers for the tracker (fast paths and the free-text lines it understands)
# --------------------------------------------------------------------------------------------
# parse_line() costs ~5 µs a line (one regex + a dataclass); the tracker must read 500,000
# lines/s, so split_line() cuts the common shape by position and falls back to the same regex
# for anything unusual. tests/unit/test_tracker_format.py checks that both always agree.
_HEX = "0123456789ABCDEFabcdef"


def split_line(raw: str) -> tuple[str, str, str, str] | None:
    """``(peer, sid, stamp, body)`` of one line, or None when it is not a transaction-log line.

    Same answer as :func:`parse_line`, without classifying the body.
    """
    raw = raw.rstrip("\r\n")
    # The fast path covers pure-ASCII lines with an HH:MM:SS stamp (isascii() is O(1)).
    if raw.isascii() and "\n" not in raw:
        sp = raw.find(" ")
        b = raw.find("[", sp)
        if sp > 0 and b > sp and not raw[sp:b].strip(" "):
            e = raw.find("] ", b)
            sid = raw[b + 1:e]
            peer = raw[:sp]
            if (0 < len(sid) <= 8 and not sid.strip(_HEX) and peer.isprintable()
                    and raw[e + 4:e + 5] == ":" and raw[e + 7:e + 8] == ":"):
                stamp = raw[e + 2:e + 10]
                if (stamp[:2] + stamp[3:5] + stamp[6:]).isdigit() and len(stamp) == 8:
                    if len(raw) == e + 10:
                        return peer, sid, stamp, ""
                    if raw[e + 10] == " ":
                        return peer, sid, stamp, raw[e + 11:]
    m = _LINE_RE.match(raw)
    if m is None:
        return None
    return m["peer"], m["sid"], m["stamp"], m["body"] or ""


# The common stamp, checked in place (``FAST_STAMP.match(raw, pos)``): HH:MM:SS, a space and a
# body of at least one character. Lines that fail it take split_line().
FAST_STAMP = re.compile(r"\d\d:\d\d:\d\d [^\n]")


def parse_summary(body: str) -> Summary | None:
    """The fields of a ``*** ...`` body, or None when it does not have the summary shape."""
    if not body.startswith(SUMMARY):
        return None
    m = _SUMMARY_RE.match(body[4:])
    if m is None:
        return None
    return Summary(m["sender"], m["rcpt"], int(m["count"]), int(m["size"]), m["duration"],
                   m["status"], m["msgid"], m["rest"])


# The same patterns matched in place, ``SUMMARY_AT.match(line, pos)`` with ``pos`` just after
# "*** " (without "^", which only matches at 0; "$" also matches before a final newline): the
# groups of parse_summary / parse_bytes without slicing the line or building the object.
# ``mailferry report`` reads one per recipient and message this way.
SUMMARY_AT = re.compile(_SUMMARY_RE.pattern[1:])
BYTES_AT = re.compile(_BYTES_RE.pattern[1:])  # the same for "N bytes (…)", after ">>> "/"<<< "


def parse_bytes(text: str) -> tuple[int, int] | None:
    """``N bytes (overall data transfer speed=S B/s)`` (after ``>>> ``/``<<< ``) → ``(N, S)``."""
    m = _BYTES_RE.match(text)
    return (int(m["n"]), int(m["speed"])) if m else None


_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_FULL_DATE_RE = re.compile(r"^[A-Z][a-z]{2}, (\d{1,2}) ([A-Z][a-z]{2}) (\d{4}) "
                           r"(\d{1,2}):(\d{2}):(\d{2})(?: ([+-]\d{4}))?$")


def stamp_seconds(stamp: str) -> int | None:
    """Seconds since midnight of an ``HH:MM:SS`` stamp (or of the older full-date form)."""
    if len(stamp) <= 8:
        h, _, rest = stamp.partition(":")
        m, _, s = rest.partition(":")
        try:
            return int(h) * 3600 + int(m) * 60 + int(s)
        except ValueError:
            return None
    full = parse_full_stamp(stamp)
    return full[3] * 3600 + full[4] * 60 + full[5] if full else None


def parse_full_stamp(stamp: str) -> tuple[int, int, int, int, int, int, str] | None:
    """``Thu, 22 Apr 2004 22:01:42 +0200`` → ``(2004, 4, 22, 22, 1, 42, "+0200")``."""
    m = _FULL_DATE_RE.match(stamp)
    if m is None or m[2] not in _MONTHS:
        return None
    return (int(m[3]), _MONTHS[m[2]], int(m[1]), int(m[4]), int(m[5]), int(m[6]), m[7] or "")


# Log file names: s20261128.log, s120261128-01.log, s20261128.log.gz (the date is in the name).
LOG_NAME_RE = re.compile(r"^s?[0-9]?(?P<date>\d{8})(?:-(?P<part>\d{1,3}))?\.log(?:\.gz)?$")


def log_file_name(date: str, part: int = 0) -> str:
    """``20261128`` → ``s20261128.log``; a size rotation adds ``-NN``."""
    return f"s{date}-{part:02d}.log" if part else f"s{date}.log"


# Free-text lines the tracker reads. The formatters are the canonical wording; the parsers are
# tolerant (IceWarp and hand-written variants) because free text is, by design, free.
def dns_mx(domain: str, hosts: list[tuple[str, int]]) -> str:
    listed = ", ".join(f"{h} ({p})" for h, p in hosts)
    return f"DNS query MX {domain}: {listed}"


def dns_mx_failed(domain: str, reason: str) -> str:
    return f"DNS query MX {domain} failed: {reason}"


def connecting(host: str, ip: str, port: int = 25, error: str | None = None) -> str:
    text = f"Connecting to {host} [{ip}]:{port}"
    return f"{text} failed: {error}" if error else text


def bounce_created(bounce_id: str, original_id: str, reason: str = "") -> str:
    return f"Bounce {bounce_id} for {original_id}" + (f": {reason}" if reason else "")


def next_retry(when: str) -> str:
    return f"Next retry at {when}"


# Queue control (``mailferry queue …``, control/service.py): one SYSTEM line per operation.
QUEUE_ACTIONS = ("held", "released", "flushed", "deleted", "bounced")


def queue_action(msgid: str, action: str, actor: str, detail: str = "") -> str:
    """``Queue: MF… held by admin (control socket, uid 1000)`` (``: detail`` when given)."""
    return f"Queue: {msgid} {action} by {actor}" + (f": {detail}" if detail else "")


def queue_bulk(count: int, action: str, actor: str, detail: str = "") -> str:
    """``Queue: 3 message(s) flushed by admin (…): domain b.test`` (an operation on many)."""
    return f"Queue: {count} message(s) {action} by {actor}" + (f": {detail}" if detail else "")


_DNS_MX_RE = re.compile(r"^DNS query MX (?P<domain>\S+?)(?P<failed> failed)?: (?P<rest>.*)$")
_MX_HOST_RE = re.compile(r"(?P<host>[^\s,()]+)(?: \((?P<pref>\d+)\))?")
_CONNECTING_RE = re.compile(
    r"^Connecting to (?P<host>\S+?)(?: \[(?P<ip>[^\]]+)\])?(?::(?P<port>\d+))?"
    r"(?: failed: (?P<error>.*))?$")
_BOUNCE_RE = re.compile(
    r"(?i)\b(?:bounce|dsn|non-delivery report)\b\D{0,40}?\b(?P<bounce>[A-Z0-9]{6,})\b"
    r".*?\b(?:for|of|about)\b\s+(?:message\s+)?(?P<original>[A-Z0-9]{6,})\b")
_RETRY_RE = re.compile(r"(?i)\bnext (?:retry|attempt|try)\b(?: (?:at|in|after))?:? (?P<when>.+)$")
_QUEUE_RE = re.compile(
    r"^Queue: (?P<msgid>[A-Za-z0-9]{6,}) (?P<action>" + "|".join(QUEUE_ACTIONS) +
    r") by (?P<actor>.+?)(?:: (?P<detail>.*))?$")
_AUTH_USER_RE = re.compile(r"(?i)\bauthenticated(?: as| user)?:? <?(?P<user>[^\s<>]+)>?")


def parse_dns_mx(text: str) -> tuple[str, list[tuple[str, int | None]], str | None] | None:
    """``DNS query MX d: h1 (10), h2 (20)`` → ``(d, [(h1, 10), (h2, 20)], None)``;
    ``DNS query MX d failed: NXDOMAIN`` → ``(d, [], "NXDOMAIN")``."""
    m = _DNS_MX_RE.match(text)
    if m is None:
        return None
    if m["failed"]:
        return m["domain"], [], m["rest"]
    hosts = [(h["host"], int(h["pref"]) if h["pref"] else None)
             for h in _MX_HOST_RE.finditer(m["rest"])]
    return m["domain"], hosts, None


def parse_connecting(text: str) -> tuple[str, str | None, int | None, str | None] | None:
    """``Connecting to h [ip]:25 failed: why`` → ``(h, ip, 25, "why")``."""
    m = _CONNECTING_RE.match(text)
    if m is None:
        return None
    return m["host"], m["ip"], int(m["port"]) if m["port"] else None, m["error"]


def parse_bounce(text: str) -> tuple[str, str] | None:
    """``Bounce MFB for MFA ...`` (and similar wording) → ``(bounce id, original id)``."""
    m = _BOUNCE_RE.search(text)
    return (m["bounce"], m["original"]) if m else None


def parse_next_retry(text: str) -> str | None:
    m = _RETRY_RE.search(text)
    return m["when"].strip() if m else None


def parse_auth_user(text: str) -> str | None:
    m = _AUTH_USER_RE.search(text)
    return m["user"] if m else None


def parse_queue_action(text: str) -> tuple[str, str, str, str] | None:
    """``Queue: MF… held by admin (…)`` → ``(msgid, "held", "admin (…)", detail)``; None for
    other text (and for the count form of :func:`queue_bulk`)."""
    m = _QUEUE_RE.match(text)
    return (m["msgid"], m["action"], m["actor"], m["detail"] or "") if m else None
