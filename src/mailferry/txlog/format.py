"""The transaction log syntax (IceWarp style) — the ONLY module that knows it, for writing and reading.

A line is ``<peer> [<SID>] <HH:MM:SS> <body>`` (see docs/log-format.md). The writer builds lines with
plain string operations because this runs for every line of every session (the stdlib ``logging``
module costs ~60 µs a record); the reader parses them back with one regular expression.
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
