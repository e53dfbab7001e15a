"""The DATA reader: turns the octets after ``354`` into the message, sans-I/O.

Rules enforced here (each one a regression test):
- The message ends ONLY at ``CRLF . CRLF`` (RFC 5321 §4.1.1.4). ``LF . LF``, ``CR . CR`` and
  ``LF . CRLF`` are content, and any bare CR or LF marks the message for rejection — this closes
  SMTP smuggling (CVE-2023-51764/51765/51766), the same stance as Postfix's
  ``smtpd_forbid_bare_newline = reject``.
- Dot-unstuffing (RFC 5321 §4.5.2).
- The size limit is enforced while streaming; the rest of an oversize message is read and thrown
  away so that the session stays usable (RFC 1870 §6.3 lets us answer 552 after the end of data).
- Text lines over 1000 octets (RFC 5321 §4.5.3.1.6) are flagged, never split.
- The end-of-data search resumes where the last one stopped: rescanning the whole buffer on each
  read is O(n²) (measured: 10 MiB took 0.6 s instead of 0.1 s).

All searching uses bytes methods (C speed); a regex line-length check costs ~0.5 s per 10 MiB.
"""

from __future__ import annotations

from typing import Protocol

from mailferry import reply
from mailferry.reply import Reply

END = b"\r\n.\r\n"
MAX_TEXT_LINE = 1000  # octets including CRLF (RFC 5321 §4.5.3.1.6)
_TAIL_FLUSH = 64 * 1024  # an unfinished line longer than this is flushed (or dropped) early


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class DataReader:
    """Feed it bytes with :meth:`feed`; it writes the unstuffed message into ``sink``.

    Invariant: when ``_lead`` is 2, ``_buf`` starts with a CRLF that was already written (or is
    the virtual CRLF before the first line), so ``CRLF.CRLF`` and ``CRLF..`` searches also work on
    the first line of the message.
    """

    def __init__(self, sink: Sink, max_size: int, *, accept_long_lines: bool = False) -> None:
        self._sink = sink
        self._max_size = max_size
        self._accept_long = accept_long_lines
        self._buf = bytearray(b"\r\n")
        self._lead = 2
        self._scan = 0
        self.size = 0  # octets of the message after unstuffing, without the end marker
        self.raw = 0  # octets received in the DATA phase, end marker included
        self.too_big = False
        self.bare_newline = False
        self.long_line = False
        self.done = False

    @property
    def error(self) -> Reply | None:
        """The reply that refuses this message, or None when it may be accepted."""
        if self.too_big:
            return reply.MESSAGE_TOO_BIG
        if self.bare_newline:
            return reply.BARE_NEWLINE_DATA
        if self.long_line and not self._accept_long:
            return reply.TEXT_LINE_TOO_LONG
        return None

    def feed(self, data: bytes) -> bytes | None:
        """Consume ``data``. Returns None while the message goes on, or the bytes that followed
        the end marker (pipelined commands, RFC 2920) once it has ended."""
        buf = self._buf
        buf += data
        end = buf.find(END, self._scan)
        if end >= 0:
            rest = bytes(buf[end + 5:])
            self._emit(end + 2)
            self.raw += len(data) - len(rest)
            self.done = True
            self._buf = bytearray()
            return rest
        self.raw += len(data)
        cut = buf.rfind(b"\r\n")
        if cut >= self._lead:  # at least one complete new line: flush through its CRLF
            self._emit(cut + 2)
            buf = self._buf
        if len(buf) - self._lead > _TAIL_FLUSH:
            self._flush_tail()
        self._scan = max(0, len(self._buf) - 4)
        return None

    def _emit(self, stop: int) -> None:
        """Write ``_buf[:stop]`` (ending in CRLF), keeping that CRLF as the new lead."""
        seg = bytes(self._buf[:stop])
        crlf = seg.count(b"\r\n")
        if seg.count(b"\r") != crlf or seg.count(b"\n") != crlf:
            self.bare_newline = True
        if b"\r\n." in seg:
            # RFC 5321 §4.5.2: "If the first character is a period and there are other characters
            # on the line, the first character is deleted" (not only when a second one follows).
            seg = seg.replace(b"\r\n.", b"\r\n")
        if not self.long_line and len(seg) - self._lead > MAX_TEXT_LINE:
            # Measured after unstuffing: the doubled dot does not count (RFC 5321 §4.5.3.1.6).
            self.long_line = max(map(len, seg.split(b"\r\n"))) > MAX_TEXT_LINE - 2
        out = seg[self._lead:]
        self._write(out)
        del self._buf[: stop - 2]
        self._lead = 2

    def _flush_tail(self) -> None:
        """An unfinished line has grown past _TAIL_FLUSH: it is a long line. Pass it on (or drop
        it) now so that memory stays bounded, keeping the last byte (it may be the CR of CRLF)."""
        self.long_line = True
        buf = self._buf
        seg = bytes(buf[:-1])
        if b"\r" in seg[self._lead:] or b"\n" in seg[self._lead:]:
            self.bare_newline = True
        out = seg.replace(b"\r\n.", b"\r\n", 1) if self._lead and seg.startswith(b"\r\n.") \
            else seg
        self._write(out[self._lead:])
        del buf[:-1]
        self._lead = 0

    def _write(self, out: bytes) -> None:
        self.size += len(out)
        if self.size > self._max_size:
            self.too_big = True
        if not (self.too_big or self.bare_newline or (self.long_line and not self._accept_long)):
            self._sink.write(out)
