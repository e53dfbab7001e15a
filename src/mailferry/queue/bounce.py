"""Delivery status notifications (RFC 3464): the bounce and the "still trying" notice.

The runner calls :func:`build_dsn` when recipients fail for good or have been delayed long
enough, and enqueues the result itself, with the null sender ``<>`` so that a DSN can never cause
another one (RFC 5321 §4.5.5, RFC 3464 §6.2). :func:`should_bounce` is the gate it asks first.

The message is a ``multipart/report`` (RFC 6522): a human explanation, the machine-readable
``message/delivery-status``, and the original message's header section — never its body, so a
bounce cannot carry a spam payload back out or leak more than the sender already has.

Pure and deterministic: the same inputs give the same bytes (dates come from the arguments, the
MIME boundary from ``dsn_msgid``). Must not: read clocks, touch the queue, or trust any text that
came from the network — such text is made single-line ASCII before it goes into a header field.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal

from mailferry.envelope import Envelope

MAX_DIAGNOSTIC = 1000  # characters kept of any one value; a hostile reply may be 400 KB
_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters ...
_HARD = 998  # ... and MUST be at most 998

_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")  # RFC 3463 §2
_SMTP_REPLY_RE = re.compile(r"[2-5]\d\d(?: |-|\Z)")
_WS_RE = re.compile(r"[\x00-\x20\x7f]+")
_BCHARS_RE = re.compile(r"[^0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 §5.1.1 bchars, minus space


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str  # the final address delivery was tried for
    original: str  # as given in RCPT TO
    action: Literal["failed", "delayed"]
    status: str  # RFC 3463 code: 5.x.x (or 4.x.x when given up on) for failed, 4.x.x for delayed
    diagnostic: str | None  # the remote reply ("550 5.1.1 ...") or a local reason
    remote_mta: str | None  # host name of the server that answered
    last_attempt: float | None
    will_retry_until: float | None
    remote_ip: str | None = None  # shown next to remote_mta in the human text


def should_bounce(envelope: Envelope) -> bool:
    """Whether a DSN may be sent for this message at all.

    Never for the null sender: that is how bounces and other notifications are sent, and
    answering one would start a loop between two mail systems (RFC 5321 §4.5.5, RFC 3464 §6.2).
    The same holds for delay notices.
    """
    return envelope.sender != ""


def _clean(text: str, limit: int = MAX_DIAGNOSTIC) -> str:
    """One line of printable ASCII: control characters (CR and LF above all — header injection)
    and whitespace runs become one space; other characters become backslash escapes."""
    text = _WS_RE.sub(" ", text).strip(" ")
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > limit:
        text = text[:limit].rstrip(" ") + " [...]"
    return text


def _date(when: float) -> str:
    # RFC 5322 §3.3 date-time with a numeric zone; UTC, so the output does not depend on the
    # host's time zone.
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _fold(line: str) -> list[str]:
    """Fold a header-style field at spaces (RFC 5322 §2.2.3) so lines stay within 78 characters
    when possible. A run without spaces longer than 998 characters is cut, which adds one space
    to the value; ``_clean`` has already collapsed whitespace, so no folded line is blank."""
    out: list[str] = []
    while len(line) > _WIDTH:
        cut = line.rfind(" ", 1, _WIDTH + 1)
        if cut <= 0:
            cut = line.find(" ", _WIDTH + 1)
            if cut < 0 or cut > _HARD:
                if len(line) <= _HARD:
                    break
                out.append(line[:_HARD])
                line = " " + line[_HARD:]
                continue
        out.append(line[:cut])
        line = line[cut:]  # keeps the space: CRLF + space unfolds back to the space
    out.append(line)
    return out


def _field(name: str, value: str) -> list[str]:
    return _fold(f"{name}: {value}")


def _diagnostic(status: RecipientStatus) -> str | None:
    if status.diagnostic is None:
        return None
    text = _clean(status.diagnostic)
    return text or None


def _host(status: RecipientStatus) -> str | None:
    if not status.remote_mta:
        return None
    host = _clean(status.remote_mta)
    return f"{host} [{_clean(status.remote_ip)}]" if status.remote_ip else host


def _explain(status: RecipientStatus) -> str:
    """One paragraph of the human part: the recipient and what happened to it."""
    who = f"<{_clean(status.recipient)}>"
    if status.original and status.original != status.recipient:
        who += f" (expanded from <{_clean(status.original)}>)"
    diag, host = _diagnostic(status), _host(status)
    if diag is not None and host is not None and _SMTP_REPLY_RE.match(diag):
        what = f"host {host} said: {diag}"
    elif diag is not None:
        what = diag  # a local reason (DNS, connection) already names what failed
    else:
        verb = "failed" if status.action == "failed" else "delayed"
        what = f"delivery {verb} (status {status.status})"
    text = f"{who}: {what}"
    if status.action == "delayed" and status.will_retry_until is not None:
        text += f" -- will keep trying until {_date(status.will_retry_until)}"
    return text


def _human(kind: str, reporting_mta: str, failures: Sequence[RecipientStatus],
           postmaster: str) -> list[str]:
    if kind == "failure":
        intro = ("Your message could not be delivered to the recipients below. The mail "
                 "system has given up on them; it will not try again. Below each one is "
                 "the reason, quoted from the receiving mail server when it gave one. The "
                 "headers of your message are attached; the message itself is not.")
    else:
        until = [s.will_retry_until for s in failures if s.will_retry_until is not None]
        when = f" until {_date(max(until))}" if until else ""
        intro = ("Your message has not been delivered yet to the recipients below. This is "
                 f"only a warning: the mail system will keep trying{when}, and you do not "
                 "need to send it again. If it still cannot be delivered, you will get "
                 "another notice.")
    paragraphs = [
        f"This is the mail delivery system at {reporting_mta}.",
        intro,
        *(_explain(s) for s in failures),
        f"If you need help, contact <{postmaster}> and include this notice.",
    ]
    lines: list[str] = []
    for p in paragraphs:
        lines += textwrap.wrap(p, _WIDTH - 2, break_long_words=True, break_on_hyphens=False)
        lines.append("")
    return lines


def _delivery_status(reporting_mta: str, envelope: Envelope,
                     failures: Sequence[RecipientStatus]) -> list[str]:
    # RFC 3464 §2.2: per-message fields, then one block per recipient after a blank line.
    lines = [
        *_field("Reporting-MTA", f"dns; {reporting_mta}"),
        *_field("X-Mailferry-Queue-ID", _clean(envelope.msgid)),
        *_field("Arrival-Date", _date(envelope.received_at)),
    ]
    for s in failures:
        lines.append("")
        lines += _field("Final-Recipient", f"rfc822; {_clean(s.recipient)}")
        if s.original and s.original != s.recipient:
            lines += _field("Original-Recipient", f"rfc822; {_clean(s.original)}")
        lines += _field("Action", s.action)
        lines += _field("Status", s.status)
        if s.remote_mta:
            lines += _field("Remote-MTA", f"dns; {_clean(s.remote_mta)}")
        diag = _diagnostic(s)
        if diag is not None:
            # RFC 3464 §2.3.6: "smtp" only for an actual SMTP reply; anything else is ours.
            kind = "smtp" if _SMTP_REPLY_RE.match(diag) else "X-Mailferry"
            lines += _field("Diagnostic-Code", f"{kind}; {diag}")
        if s.last_attempt is not None:
            lines += _field("Last-Attempt-Date", _date(s.last_attempt))
        if s.action == "delayed" and s.will_retry_until is not None:
            lines += _field("Will-Retry-Until", _date(s.will_retry_until))
    return lines


def _header_section(message: bytes) -> bytes:
    """The original's header section, CRLF line ends, without the blank line or the body.

    Line ends are read as ``smtp.client.encode_data`` reads them (CRLF, lone CR, lone LF are one
    line end each), so the split agrees with what a later relay of the original would send.
    """
    if b"\r" in message or b"\n" in message:
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if message.startswith(b"\r\n"):
        return b""  # RFC 5322 §2.1: an empty line first means no header fields at all
    end = message.find(b"\r\n\r\n")
    if end >= 0:
        return message[: end + 2]
    # No blank line: the whole message is header (RFC 5322 §3.5 makes the body optional).
    return message if not message or message.endswith(b"\r\n") else message + b"\r\n"


def _boundary(dsn_msgid: str, reporting_mta: str, parts: Sequence[bytes]) -> str:
    """Derived from the DSN's own id, so output is reproducible; made longer in the unlikely case
    that the quoted headers contain it (RFC 2046 §5.1.1: it must not occur in any part)."""
    base = _BCHARS_RE.sub("", f"=_{dsn_msgid}/{reporting_mta}")[:60]
    boundary, n = base, 0
    while any(f"--{boundary}".encode() in p for p in parts):
        n += 1
        boundary = f"{base}.{n}"
    return boundary


def _check(kind: str, failures: Sequence[RecipientStatus]) -> None:
    if not failures:
        raise ValueError("a DSN needs at least one recipient")
    want = "failed" if kind == "failure" else "delayed"
    for s in failures:
        if s.action != want:
            raise ValueError(f"{kind} DSN for a recipient with action {s.action!r}")
        if not _STATUS_RE.match(s.status):
            raise ValueError(f"bad status code {s.status!r}")
        # RFC 3463 §3.1: 4.X.X may accompany a failure report ("persistence of some temporary
        # condition has caused abandonment", e.g. 4.4.7 when the lifetime ran out, as Postfix
        # reports it); a delay is never permanent, and neither is ever a success (2.X.X).
        allowed = ("4", "5") if s.action == "failed" else ("4",)
        if s.status[0] not in allowed:
            raise ValueError(f"status {s.status} does not match action {s.action}")


def build_dsn(*, reporting_mta: str, original_envelope: Envelope, original_message: bytes,
              failures: Sequence[RecipientStatus], kind: Literal["failure", "delay"],
              now: float, dsn_msgid: str, postmaster: str) -> bytes:
    """The complete DSN message (RFC 5322, CRLF line ends), addressed to the original sender.

    Raises ValueError for the null sender (see :func:`should_bounce`), an empty ``failures``, a
    recipient whose action does not match ``kind``, or a status that does not match its action.
    """
    if not should_bounce(original_envelope):
        raise ValueError("no DSN for a message from the null sender")
    if kind not in ("failure", "delay"):
        raise ValueError(f"unknown DSN kind {kind!r}")
    _check(kind, failures)
    mta, postmaster = _clean(reporting_mta), _clean(postmaster)
    sender = _clean(original_envelope.sender)

    human = "\r\n".join(_human(kind, mta, failures, postmaster)).encode("ascii")
    status = ("\r\n".join(_delivery_status(mta, original_envelope, failures))
              + "\r\n").encode("ascii")
    headers = _header_section(original_message)
    boundary = _boundary(_clean(dsn_msgid), mta, (human, status, headers))
    # The quoted headers are the only part that may hold 8-bit octets (RFC 6532 headers or raw
    # bytes); the transfer encoding says so, and the client declares BODY=8BITMIME for it.
    cte = "7bit" if headers.isascii() else "8bit"

    subject = ("Undelivered Mail Returned to Sender" if kind == "failure"
               else "Delayed Mail (still being retried)")
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        *_fold(f"To: <{sender}>"),
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{_clean(dsn_msgid)}@{mta}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: not to be answered by responders
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
        f"Content-Transfer-Encoding: {cte}",
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    sep = f"--{boundary}\r\n".encode()
    out = [
        "\r\n".join(top).encode("ascii") + b"\r\n",
        sep,
        b"Content-Description: Notification\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        human, b"\r\n",
        sep,
        b"Content-Description: Delivery report\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n",
        status, b"\r\n",
        sep,
        b"Content-Description: Undelivered message headers\r\n"  # RFC 6522 §4
        b"Content-Type: text/rfc822-headers\r\n"
        + f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode(),
        headers, b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(out)
