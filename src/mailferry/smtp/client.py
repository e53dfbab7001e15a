"""The client side of SMTP as pure helpers, sans-I/O: read replies, build commands, encode DATA.

Outbound delivery (``delivery/outbound.py``) owns the socket: it feeds what the remote server
sends into a :class:`ReplyReader` and takes :class:`ClientReply` values out; it sends the lines
built by :func:`mail_command` / :func:`rcpt_command` and the payload from :func:`encode_data`.

Must not: open sockets, read clocks, resolve names, or decide what a reply *means* for a message
(defer, bounce, next MX) — that is delivery's job. It must also never trust the peer: replies are
bounded in size, and nothing built here can smuggle a second command (CR, LF, NUL are refused).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_REPLY_LINE = 4096  # octets of one reply line, CRLF not counted (RFC 5321 §4.5.3.1.5 says
#                        512; real servers exceed it, so we allow more but stay bounded)
MAX_REPLY_LINES = 100  # lines in one reply: an EHLO reply has ~10, a hostile server endless


class ProtocolError(Exception):
    """The server broke the reply grammar or our limits; the connection cannot be trusted."""


# RFC 3463 §2: class "." subject "." detail; class 2, 4 or 5, then 1-3 digits each.
_ENHANCED_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?= |\Z)")
# Control characters (except TAB) are shown escaped: reply texts end up in the transaction log
# and in bounces, and a CR there must never start a new record or header.
_ESCAPE_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F)}
_ESCAPE_CONTROLS[0x0D] = "\\r"


@dataclass(frozen=True, slots=True)
class ClientReply:
    """One complete reply. ``lines`` are the texts after the code and separator, one per line.

    ``raw_lines`` keep the lines as received ("250-foo", ..., "250 bar"), for the transaction
    log; when built by hand they are rendered from ``code`` and ``lines``.
    """

    code: int
    lines: tuple[str, ...]
    raw_lines: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.raw_lines:
            last = len(self.lines) - 1
            rendered = tuple(f"{self.code}{' ' if i == last else '-'}{t}"
                             for i, t in enumerate(self.lines))
            object.__setattr__(self, "raw_lines", rendered)

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status code that starts the first line, e.g. "5.1.1", or None.

        A code whose class disagrees with the reply code ("250 5.0.0") is ignored: RFC 3463 §2
        makes the class mirror the reply's success/failure, so one of the two is wrong and the
        reply code is what RFC 5321 tells clients to act on.
        """
        if not self.lines:
            return None
        m = _ENHANCED_RE.match(self.lines[0])
        if m is None or m.group(1) != str(self.code)[0]:
            return None
        return m.group(0)

    @property
    def is_positive(self) -> bool:
        return self.code < 400  # 2yz completion and 3yz intermediate (RFC 5321 §4.2.1)

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        """One line, "550 5.1.1 text ..." — for bounces and the operational log."""
        return f"{self.code} {self.text}".rstrip(" ")


def _valid_code(code: bytes) -> bool:
    # RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39
    return (len(code) == 3 and 0x32 <= code[0] <= 0x35 and 0x30 <= code[1] <= 0x35
            and 0x30 <= code[2] <= 0x39)


def _decode(line: bytes) -> str:
    # UTF-8 is legal in replies (RFC 6531 §3.7.4); anything else is kept visible as \xNN escapes.
    return line.decode("utf-8", "backslashreplace").translate(_ESCAPE_CONTROLS)


class ReplyReader:
    """Feed it what the server sends; take complete replies out with :meth:`next_reply`.

    Lines end at LF; a CR right before it is dropped. RFC 5321 §2.3.8 requires CRLF, but unlike
    the server side a client gains nothing by refusing bare LF (a reply is never relayed, so there
    is no smuggling risk) and would make mail undeliverable to sloppy servers Postfix talks to.
    After a :class:`ProtocolError` the reader stays failed: the session must be dropped.

    Memory is bounded as long as the caller drains with ``next_reply`` after every ``feed``:
    an unfinished line fails as soon as it passes ``max_line``, a reply at ``max_lines``.
    """

    def __init__(self, *, max_line: int = MAX_REPLY_LINE,
                 max_lines: int = MAX_REPLY_LINES) -> None:
        self._max_line = max_line
        self._max_lines = max_lines
        self._buf = bytearray()
        self._code: int | None = None  # code of the reply being read (after its first line)
        self._lines: list[str] = []
        self._raw: list[str] = []
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished reply are buffered (e.g. at connection close)."""
        return bool(self._buf) or bool(self._lines)

    def next_reply(self) -> ClientReply | None:
        """The next complete reply, or None when more bytes are needed. Raises ProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            return self._parse()
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _parse(self) -> ClientReply | None:
        buf = self._buf
        while True:
            end = buf.find(b"\n")
            if end < 0:
                # +1: the line may be complete but for its LF, with the CR already here.
                if len(buf) > self._max_line + 1:
                    raise ProtocolError(f"reply line longer than {self._max_line} octets")
                return None
            line = bytes(buf[:end])
            del buf[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max_line:
                raise ProtocolError(f"reply line longer than {self._max_line} octets")
            code_b, sep = line[:3], line[3:4]
            # RFC 5321 §4.2: "ddd-text" continues, "ddd text" (or a bare "ddd") ends the reply.
            if not _valid_code(code_b) or sep not in (b"", b" ", b"-"):
                raise ProtocolError(f"malformed reply line: {_decode(line[:80])!r}")
            code = int(code_b)
            if self._code is None:
                self._code = code
            elif code != self._code:
                # RFC 5321 §4.2.1: every line of a multi-line reply carries the same code.
                raise ProtocolError(f"reply code changed from {self._code} to {code} "
                                    "inside a multi-line reply")
            if len(self._lines) >= self._max_lines:
                raise ProtocolError(f"reply longer than {self._max_lines} lines")
            self._lines.append(_decode(line[4:]))
            self._raw.append(_decode(line))
            if sep != b"-":
                reply = ClientReply(code, tuple(self._lines), tuple(self._raw))
                self._code, self._lines, self._raw = None, [], []
                return reply


# RFC 5321 §4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


def parse_ehlo(reply: ClientReply) -> dict[str, str]:
    """Extensions of a 250 EHLO reply: upper-case keyword → parameters ("" when none).

    The first line is the greeting (RFC 5321 §4.1.1.1). Lines whose keyword breaks the grammar
    (e.g. the pre-standard "AUTH=LOGIN") are skipped, not fatal: an odd extension line must not
    stop delivery. When a keyword repeats, the first one counts.
    """
    if reply.code != 250:
        raise ValueError(f"not a successful EHLO reply: {reply.code}")
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip(" ").partition(" ")
        if _KEYWORD_RE.match(keyword):
            extensions.setdefault(keyword.upper(), params.strip(" "))
    return extensions


def peer_max_size(extensions: Mapping[str, str]) -> int | None:
    """The peer's message size limit from ``SIZE n`` (RFC 1870 §4), or None if it sets none.

    ``SIZE`` without a number, ``SIZE 0`` and a malformed number all mean "no declared limit".
    """
    value = extensions.get("SIZE", "")
    if value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def _check_path(path: str, what: str) -> None:
    # A CR or LF would end our command early and let the rest run as a second one (command
    # injection); NUL and other controls are never valid in a path (RFC 5321 §4.1.2).
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"{what} contains control characters: {path!r}")
    if not path.isascii():
        # Would need SMTPUTF8 (RFC 6531), which this client never asks for.
        raise ValueError(f"{what} is not ASCII: {path!r}")


def mail_command(sender: str, size: int | None, body8bit: bool,
                 extensions: Mapping[str, str]) -> str:
    """``MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME]`` without CRLF. ``sender`` "" is ``<>``.

    ``body8bit`` is whether the message has octets over 127 (``not message.isascii()``). Whether
    to send 8-bit data to a peer without 8BITMIME is the caller's decision; here BODY is only
    declared where RFC 6152 §2 allows it.
    """
    _check_path(sender, "sender")
    parts = [f"MAIL FROM:<{sender}>"]
    if size is not None and "SIZE" in extensions:
        if size < 0:
            raise ValueError(f"negative size: {size}")
        parts.append(f"SIZE={size}")  # RFC 1870 §6: only to a server that advertised SIZE
    if body8bit and "8BITMIME" in extensions:
        parts.append("BODY=8BITMIME")  # RFC 6152 §3
    return " ".join(parts)


def rcpt_command(rcpt: str) -> str:
    """``RCPT TO:<rcpt>`` without CRLF. The null path is not a recipient (RFC 5321 §4.1.1.3)."""
    if not rcpt:
        raise ValueError("empty recipient")
    _check_path(rcpt, "recipient")
    return f"RCPT TO:<{rcpt}>"


def encode_data(message: bytes) -> bytes:
    """The octets to send after 354: normalised, dot-stuffed, ending in CRLF, then ``.CRLF``.

    Line ends: every CRLF, lone CR and lone LF is one line end, written as CRLF (RFC 5321 §2.3.8
    forbids the bare forms on the wire; "CR LF" always pairs left to right, so ``CR CR LF`` is two
    line ends). An empty message stays empty: the payload is just ``.CRLF``.

    Whole-buffer ``bytes`` operations only (C speed); this runs for every delivered message.
    """
    if message.count(b"\r\n") != message.count(b"\r") or \
            message.count(b"\r\n") != message.count(b"\n"):
        # CRLF → LF first, so the CR of a CRLF is not also taken for a lone CR.
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    # RFC 5321 §4.5.2: a line starting with "." gets one more "."; the first line has no CRLF
    # before it, so it is checked on its own.
    if b"\r\n." in message:
        message = message.replace(b"\r\n.", b"\r\n..")
    if message.startswith(b"."):
        message = b"." + message
    if message and not message.endswith(b"\r\n"):
        return message + b"\r\n.\r\n"  # RFC 5321 §4.1.1.4: the data must end with CRLF
    return message + b".\r\n"
