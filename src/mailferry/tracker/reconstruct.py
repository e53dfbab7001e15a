"""Interleaved log lines → sessions → transactions, joined on the message ID into one story each.

Where it sits: reader.py hands it the lines of each file in date order; it splits them into
sessions (per peer and SID, at Connected / Disconnected), lets session.py rebuild each session,
and when a session closes joins its transactions to the message table: the session that received
a message, every outgoing session that delivered (or deferred, or failed) it, and its bounce.
A message's record is emitted as soon as its story is final (every recipient delivered or failed,
the bounce too), so output streams; the rest is emitted by :meth:`Reconstructor.finish`.

Memory stays bounded: only open sessions and messages still waiting for their deliveries are
held, each table with a cap (the oldest entry is emitted as it stands when the cap is reached).
It must not: write output (it calls ``emit``), crash on any input (a line it cannot read is
counted in :class:`Stats`), or import the server's packages.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mailferry.tracker import records
from mailferry.tracker.session import IN, OUT, Session, Txn, When
from mailferry.txlog import format as fmt

Record = dict
_TERMINAL = frozenset(("delivered", "failed"))
_REMOVED = frozenset(("deleted", "bounced"))  # queue actions that end a message's story
_UNDATED_SPLIT = 12 * 3600  # an undated log whose clock jumps back this far has passed midnight
_HEX = "0123456789ABCDEFabcdef"

# " HH:MM:SS " (a stamp with the spaces around it) → seconds of the day, or -1 for anything
# else: other shapes, non-ASCII digits, an hour past 23 (FAST_STAMP accepts those; they then
# take the general path, which decides the same). One lookup checks a line's stamp in the hot
# loops (here and in tally.py), and gives its time in tally.py. Bounded: cleared when full.
STAMPS: dict[str, int] = {}
_STAMP_RE = re.compile(r" ([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]) ", re.ASCII)
_SECONDS = [f"{s:02d} " for s in range(60)]


def stamp_value(text: str) -> int:
    """STAMPS[text], computed. A good stamp brings its whole minute in: a log has lines in
    most seconds, and 60 entries cost less than 60 misses."""
    if len(STAMPS) >= 1 << 17:
        STAMPS.clear()
    m = _STAMP_RE.fullmatch(text)
    if m is None:
        STAMPS[text] = -1
        return -1
    minute = int(m[1]) * 3600 + int(m[2]) * 60
    head = text[:7]
    STAMPS.update(zip([head + s for s in _SECONDS], range(minute, minute + 60), strict=True))
    return minute + int(m[3])


@dataclass
class Source:
    """Where lines come from: a file name (for messages) and the date its name carries."""

    name: str
    day: int | None = None  # date ordinal, None when the name carries no date
    lines_before: int = 0  # lines of this file read before (a reader that feeds it piecemeal)


@dataclass
class Stats:
    lines: int = 0
    blank: int = 0
    unparsed: int = 0
    foreign: int = 0  # well-formed lines from other IceWarp logs (peer is not an IP address)
    system: int = 0
    sessions_in: int = 0
    sessions_out: int = 0
    incomplete: int = 0
    evicted: int = 0
    examples: list[tuple[str, int, str]] = field(default_factory=list)  # first unparsed lines

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["examples"] = [{"file": f, "line": n, "text": t} for f, n, t in self.examples]
        return d


class UnreadableLine(ValueError):
    """--strict: a line that is not a transaction-log line (``str()`` names file and line)."""

    def __init__(self, source: str, lineno: int, text: str) -> None:
        super().__init__(f"{source}:{lineno}: not a transaction-log line: {text[:120]!r}")
        self.source, self.lineno, self.text = source, lineno, text


class Message:
    """One message ID's story while it is being assembled."""

    __slots__ = ("actions", "bounce", "bounce_of", "deliveries", "emitted", "fates", "inbound",
                 "msgid")

    def __init__(self, msgid: str) -> None:
        self.msgid = msgid
        self.inbound: tuple[Session, Txn] | None = None
        self.deliveries: list[tuple[Session, Txn]] = []
        self.fates: dict[str, dict] = {}  # recipient (lower case) → what delivery made of it
        self.bounce: str | None = None
        self.bounce_of: str | None = None
        self.emitted = False
        self.actions: list[dict] = []  # queue control: held, released, deleted … (SYSTEM lines)


class Reconstructor:
    """Feed it lines (:meth:`feed`), then call :meth:`finish`; records go to ``emit``."""

    def __init__(self, emit: Callable[[Record], None], *, explain: Iterable[str] | None = None,
                 updates: bool = False, strict: bool = False, max_open: int = 20_000,
                 max_pending: int = 50_000) -> None:
        self.emit = emit
        self.strict = strict  # the first unreadable line raises UnreadableLine
        # --explain: keep the raw lines of the sessions that mention these message IDs (and
        # their bounces'). Every open session holds its lines until it closes and is checked.
        self.explain = {i.upper() for i in explain} if explain is not None else None
        self.keep_lines = explain is not None
        self.updates = updates  # --follow: emit a record each time a story changes
        self.max_open = max_open
        self.max_pending = max_pending
        self.stats = Stats()
        self._open: dict[str, Session] = {}
        self._bufs: dict[str, list] = {}  # the buffered lines of each open session
        self._cur_day: int | None = None
        self._msgs: dict[str, Message] = {}
        self._bounce_of: dict[str, str] = {}  # bounce ID → original ID, from free text
        self._mentions: dict[str, str] = {}  # ID named by a bounce's session → that bounce
        self._peers: dict[str, str] = {}  # peer column → "ip" / "system" / "foreign"
        self._heads: dict[str, str] = {}  # a line's first 17 characters → its IP peer, or ""
        self._day = 0  # current day of undated input (offset)
        self._last_stamp = ""

    # -- input ----------------------------------------------------------------------------------
    # The hot loop. Most lines belong to a session that is already open and have the common
    # shape; for those it only finds the "] " that ends the SID, looks the prefix up among the
    # open sessions, checks the stamp with one regex and buffers the raw line. The session's lines
    # are interpreted in one go when it closes (session.replay). Everything else — a session's
    # first line, Connected, Disconnected, SYSTEM lines, other shapes — takes _line(), which
    # parses with txlog.format.split_line.
    def feed(self, lines: Iterable[str], source: Source) -> None:
        """Read the lines of one file (or stream). Sessions stay open across files."""
        dated = source.day is not None
        day = source.day if dated else self._day
        self._set_day(day)
        bufs = {} if self.keep_lines else self._bufs  # --explain: every line takes _line()
        stamp_at = fmt.FAST_STAMP.match
        slow = self._line
        last_stamp = self._last_stamp
        known = " 00:00:00 "  # the last stamp (with its spaces) at column 22 found good
        good = STAMPS.get
        first = lineno = source.lines_before
        try:
            for raw in lines:
                lineno += 1
                # Our own logs first: the peer padded to 15 columns and a 4-digit SID end the
                # prefix at 22 (same decisions as below, without the search and the regex).
                buf = bufs.get(raw[:22])
                if buf is not None:
                    stamp = raw[22:32]
                    if stamp != known:
                        t = good(stamp)
                        if (stamp_value(stamp) if t is None else t) >= 0:
                            known = stamp
                    if stamp == known:
                        c = raw[32:33]
                        if c != "C" and c != "D" and c != "\n" and c:
                            if not dated:
                                stamp = raw[23:31]
                                if stamp < last_stamp and _midnight(last_stamp, stamp):
                                    day += 1
                                    self._set_day(day)
                                last_stamp = stamp
                            buf.append(raw)
                            continue
                e = raw.find("] ")
                buf = bufs.get(raw[:e + 1]) if e > 0 else None
                if buf is not None and stamp_at(raw, e + 2) is not None:
                    if not dated:
                        stamp = raw[e + 2:e + 10]
                        if stamp < last_stamp and _midnight(last_stamp, stamp):
                            day += 1
                            self._set_day(day)
                        last_stamp = stamp
                    c = raw[e + 11]
                    if c != "C" and c != "D":  # Connected / Disconnected open and close sessions
                        buf.append(raw)
                        continue
                    if c == "D" and raw.startswith("Disconnected", e + 11) and \
                            len(raw.rstrip("\r\n")) == e + 23:
                        buf.append(raw)
                        key = raw[:e + 1]
                        self._close(key, self._open[key], True)
                        continue
                elif e == 21 and raw[:22] not in bufs and self._begin(raw, lineno, source.name,
                                                                         day):
                    stamp = raw[23:31]  # a session begins, in our width (as _line would)
                    if not dated and stamp < last_stamp and _midnight(last_stamp, stamp):
                        day += 1
                        self._set_day(day)
                    last_stamp = stamp
                    continue
                stamp = slow(raw, lineno, source.name, day)
                if not dated and stamp:
                    if stamp < last_stamp and _midnight(last_stamp, stamp):
                        day += 1
                        self._set_day(day)
                    last_stamp = stamp
        finally:
            self.stats.lines += lineno - first
            if not dated:
                self._day = day
                self._last_stamp = last_stamp

    def _set_day(self, day: int) -> None:
        """A new day: later lines of the open sessions carry it (a marker in their buffers)."""
        if day != self._cur_day:
            self._cur_day = day
            for buf in self._bufs.values():
                buf.append(day)

    def _line(self, raw: str, lineno: int, source: str, day: int) -> str | None:
        """Any line, the careful way. Returns its stamp (None when it is not a log line)."""
        parts = fmt.split_line(raw)
        stats = self.stats
        if parts is None:
            if raw.strip():
                self._unparsed(source, lineno, raw)
            else:
                stats.blank += 1
            return None
        peer, sid, stamp, body = parts
        kind = self._peers.get(peer) or self._peer_kind(peer)
        if kind != "ip":
            if kind == "system":
                stats.system += 1
                if body.startswith("Queue: "):
                    self._queue_action(body, (day, stamp))
                else:
                    self._free_text(body)
            else:
                stats.foreign += 1
            return stamp
        e = raw.find("] ")
        key = raw[:e + 1]
        s = self._open.get(key)
        c = body[:1]
        connected = c == "C" and (body == fmt.CONNECTED or body.startswith("Connected,"))
        if connected and s is not None and (s.connected or self._has_protocol(key, s)):
            # A new session reusing the SID of one whose Disconnected we never saw.
            self._close(key, s, False)
            s = None
        if s is None:
            s = self._new(key, peer, sid, (day, stamp), source, lineno, e + 2)
            s.first = "connected" if connected else (
                "text" if c not in "<>*" and body != fmt.DISCONNECTED else "protocol")
        if connected:
            s.connected = True
        buf = self._bufs[key]
        if len(stamp) == 8 and fmt.FAST_STAMP.match(raw, e + 2):
            buf.append(raw)
        else:
            buf.append((stamp, body))
        if s.lines is not None:
            s.lines.append((source, lineno, raw.rstrip("\r\n")))
        if c == "D" and body == fmt.DISCONNECTED:
            self._close(key, s, True)
        return stamp

    def _begin(self, raw: str, lineno: int, source: str, day: int) -> bool:
        """The first line of a session in our width (the peer padded to 15 columns, a 4-digit
        SID) with a plain stamp: what _line does with it, split_line's checks done by position
        (the peer column once per distinct peer). False when it needs _line after all."""
        stamp_key = raw[22:32]
        t = STAMPS.get(stamp_key)
        if (stamp_value(stamp_key) if t is None else t) < 0 or self.keep_lines:
            return False
        peer = self._heads.get(raw[:17])
        if peer is None:
            peer = self._head(raw[:17])
        sid = raw[17:21]
        body = raw[32:].rstrip("\r\n")
        if not peer or sid.strip(_HEX) or not body or "\n" in body:
            return False  # other logs, SYSTEM, a bad SID, no body: _line
        c = body[0]
        connected = c == "C" and (body == fmt.CONNECTED or body.startswith("Connected,"))
        key = raw[:22]
        s = self._new(key, peer, sid, (day, raw[23:31]), source, lineno, 23)
        s.first = "connected" if connected else (
            "text" if c not in "<>*" and body != fmt.DISCONNECTED else "protocol")
        if connected:
            s.connected = True
        self._bufs[key].append(raw)
        if c == "D" and body == fmt.DISCONNECTED:
            self._close(key, s, True)
        return True

    def _head(self, head: str) -> str:
        """The peer of a line's first 17 characters (peer, padding, "[") when split_line would
        read it so and it is an IP address, else "" (cached: a log has few peers)."""
        sp = head.find(" ")
        peer = head[:sp]
        ok = 0 < sp < 16 and head[sp:16] == " " * (16 - sp) and head[16] == "[" and \
            peer.isprintable() and (self._peers.get(peer) or self._peer_kind(peer)) == "ip"
        if len(self._heads) > 100_000:
            self._heads.clear()
        self._heads[head] = peer if ok else ""
        return peer if ok else ""

    def _has_protocol(self, key: str, s: Session) -> bool:
        """Whether a session without Connected already has protocol lines (not just the free
        text of an outgoing session before it connects)."""
        for x in self._bufs.get(key, ()):
            if x.__class__ is str:
                c = x[s.off + 9:s.off + 10]
            elif x.__class__ is tuple:
                c = x[1][:1]
            else:
                continue
            if c in ("<", ">", "*"):
                return True
        return False

    def open_sessions(self) -> list[tuple[Session, list[Txn]]]:
        """The sessions still open (no Disconnected yet), rebuilt from their lines so far, each
        with its mail transactions (the last one may be open): what a live view shows. Nothing
        is changed: each is a fresh Session replaying a copy of the buffered lines."""
        found = []
        for key, s in list(self._open.items()):
            copy = Session(s.peer, s.sid, s.start, s.source, s.lineno, s.off)
            copy.first, copy.connected = s.first, s.connected
            copy.lday = s.start[0]
            copy.replay(list(self._bufs.get(key, ())))
            found.append((copy, copy.txns + ([copy.txn] if copy.txn is not None else [])))
        return found

    def bounce_of(self, original: str) -> str | None:
        """The ID of the bounce logged for ``original`` (``Bounce B for A``), when it is still
        remembered: a bounce delivered to a local mailbox has no session to tell it."""
        want = original.upper()
        return next((b for b, o in reversed(self._bounce_of.items()) if o.upper() == want), None)

    def finish(self) -> None:
        """End of input: close what is still open (marked incomplete) and emit every story."""
        for key, s in list(self._open.items()):
            self._close(key, s, False)
        for m in list(self._msgs.values()):
            if not m.emitted and m.bounce_of is None:
                self._emit(m, final=self._removed(m))
        for m in list(self._msgs.values()):
            if not m.emitted:
                self._emit(m, final=False)
        self._msgs.clear()

    # -- sessions -------------------------------------------------------------------------------
    def _new(self, key: str, peer: str, sid: str, when: When, source: str, lineno: int,
             off: int) -> Session:
        s = Session(peer, sid, when, source, lineno, off)
        if self.keep_lines:
            s.lines = []
        opened = self._open
        opened[key] = s
        self._bufs[key] = []
        if len(opened) > self.max_open:
            # Bounded memory: the oldest open session is the likeliest to have lost its end.
            old_key = next(iter(opened))
            self.stats.evicted += 1
            self._close(old_key, opened[old_key], False)
        return s

    def _close(self, key: str, s: Session, disconnected: bool) -> None:
        if self._open.get(key) is s:
            del self._open[key]
        s.replay(self._bufs.pop(key, ()))
        for _, text in s.notes:
            if "ounce" in text or "DSN" in text:  # cheap test before the bounce-link regex
                self._free_text(text)
        if self.explain is not None and s.lines is not None and not any(
                i in line for _, _, line in s.lines for i in self.explain):
            s.lines = None
        s.close(disconnected)
        stats = self.stats
        if not (disconnected and s.start_seen()):
            stats.incomplete += 1
        if s.direction is OUT:
            stats.sessions_out += 1
            self._outgoing(s)
        else:
            stats.sessions_in += 1
            self._incoming(s)

    def _incoming(self, s: Session) -> None:
        if not s.txns:
            self.emit(records.session_record(s))
            return
        for txn in s.txns:
            msgid = txn.msgid
            if msgid is None or txn.status != "accepted":
                self.emit(records.message_record(msgid, (s, txn), [], {}, None, True))
                continue
            m = self._msgs.get(msgid)
            if m is None or m.emitted:
                m = self._message(msgid)
            m.inbound = (s, txn)
            self._link_bounce(m, s, txn)
            self._changed(m)

    def _outgoing(self, s: Session) -> None:
        if not any(t.msgid for t in s.txns):
            self.emit(records.session_record(s))
            return
        for txn in s.txns:
            if txn.msgid is None:
                continue
            m = self._msgs.get(txn.msgid)
            if m is None or m.emitted:
                m = self._message(txn.msgid)
            m.deliveries.append((s, txn))
            records.apply_delivery(m.fates, s, txn)
            self._link_bounce(m, s, txn)
            self._changed(m)

    # -- the join ---------------------------------------------------------------------------------
    def _message(self, msgid: str) -> Message:
        m = self._msgs[msgid] = Message(msgid)
        if msgid in self._bounce_of:
            self._set_bounce(msgid, self._bounce_of[msgid])
        bounce = self._mentions.pop(msgid, None)
        if bounce is not None:  # a bounce, already seen, whose session named this message
            self._set_bounce(bounce, msgid)
        msgs = self._msgs
        if len(msgs) > self.max_pending:
            oldest = next(iter(msgs))
            self.stats.evicted += 1
            self._emit(msgs[oldest], final=False)
        return m

    def _link_bounce(self, m: Message, s: Session, txn: Txn) -> None:
        """A message from ``<>`` whose session mentions another message's ID is its bounce."""
        if txn.sender != "" or m.bounce_of is not None:
            return
        tokens = [t for _, text in s.notes
                  for t in text.replace(":", " ").replace(",", " ").split() if _id_like(t)]
        for token in tokens:
            other = self._msgs.get(token)
            if other is not None and other is not m and not other.emitted:
                self._set_bounce(m.msgid, other.msgid)
                return
        # The original may not be known yet (its receiving session is still open): remember.
        for token in tokens[:4]:
            if token != m.msgid:
                if len(self._mentions) > self.max_pending:
                    self._mentions.pop(next(iter(self._mentions)))
                self._mentions[token] = m.msgid

    def _set_bounce(self, bounce: str, original: str) -> None:
        self._bounce_of[bounce] = original
        if self.explain is not None and original.upper() in self.explain:
            self.explain.add(bounce.upper())
        b = self._msgs.get(bounce)
        o = self._msgs.get(original)
        # One level only: a bounce is never bounced (RFC 5321 §6.1), so a link that would make
        # a chain or a cycle (a damaged log) is not made.
        if b is not None and o is not None and b is not o and o.bounce_of is None and \
                b.bounce is None and b.bounce_of is None and o.bounce in (None, bounce):
            b.bounce_of = original
            o.bounce = bounce

    def _free_text(self, text: str) -> None:
        link = fmt.parse_bounce(text)
        if link is not None and link[0] != link[1]:
            if len(self._bounce_of) > self.max_pending:
                self._bounce_of.pop(next(iter(self._bounce_of)))
            self._set_bounce(*link)

    def _queue_action(self, text: str, when: When) -> None:
        """``Queue: MF… held by admin (…)``: part of that message's story when it is being
        followed (its receipt was seen and its story is not over)."""
        action = fmt.parse_queue_action(text)
        if action is None:
            return  # the count form (a flush of many): no one message's story
        msgid, what, actor, detail = action
        m = self._msgs.get(msgid)
        if m is None or m.emitted:
            return
        m.actions.append({"time": records.iso(when), "action": what, "by": actor,
                          "detail": detail or None})
        # Not emitted here even when it ends the story (deleted, bounced): a delivery session
        # of the message may still be open (connections are kept for reuse), and its close
        # emits the whole story; finish() emits the rest as final.
        if self.updates:
            self.emit(self._record(m, final=False))

    @staticmethod
    def _removed(m: Message) -> bool:
        """An administrator deleted it, or returned it to the sender: its story is over."""
        return any(a["action"] in _REMOVED for a in m.actions)

    def _changed(self, m: Message) -> None:
        if m.bounce_of is not None:
            original = self._msgs.get(m.bounce_of)
            if original is not None and not original.emitted:
                self._changed(original)  # the bounce's story is part of the original's
                return
        if self._final(m):
            self._emit(m, final=True)
        elif self.updates:
            self.emit(self._record(m, final=False))

    def _final(self, m: Message, alone: bool = True) -> bool:
        """Whether ``m``'s story is over: every recipient delivered or failed, and the bounce of
        a failure delivered too. A message seen only through its deliveries waits (until the end
        of input) unless it is a bounce: its receiving session may still be open."""
        fates = m.fates
        if self._removed(m):
            return True
        if m.inbound is not None:
            txn = m.inbound[1]
            for r in txn.rcpts:
                if r.status != "accepted":
                    continue
                fate = fates.get(r.address.lower())
                if fate is None:
                    if r.route != "local":
                        return False  # relayed, and no delivery seen yet
                elif fate["status"] not in _TERMINAL:
                    return False
            sender = txn.sender
        else:
            if alone and m.bounce_of is None:
                return False
            if not fates or any(f["status"] not in _TERMINAL for f in fates.values()):
                return False
            sender = m.deliveries[0][1].sender if m.deliveries else None
        if sender and any(f["status"] == "failed" for f in fates.values()):
            # A bounce follows: the story ends with the bounce's own delivery.
            b = self._msgs.get(m.bounce) if m.bounce else None
            return b is not None and self._final(b, alone=False)
        return True

    def _emit(self, m: Message, *, final: bool) -> None:
        if m.emitted:
            return
        m.emitted = True
        self._msgs.pop(m.msgid, None)
        bounce = self._msgs.get(m.bounce) if m.bounce else None
        if bounce is not None:
            bounce.emitted = True
            self._msgs.pop(bounce.msgid, None)
        self.emit(self._record(m, final=final, bounce=bounce))

    def _record(self, m: Message, *, final: bool, bounce: Message | None = None) -> Record:
        if bounce is None and m.bounce:
            bounce = self._msgs.get(m.bounce)
        b = None
        if bounce is not None:
            b = records.message_record(bounce.msgid, bounce.inbound, bounce.deliveries,
                                       bounce.fates, None, final)
        return records.message_record(m.msgid, m.inbound, m.deliveries, m.fates, b, final,
                                      bounce_of=m.bounce_of, actions=m.actions)

    # -- odds and ends --------------------------------------------------------------------------
    def _peer_kind(self, peer: str) -> str:
        if peer == fmt.SYSTEM_PEER:
            kind = "system"
        else:
            try:
                ipaddress.ip_address(peer)
                kind = "ip"
            except ValueError:
                kind = "foreign"
        if len(self._peers) > 100_000:
            self._peers.clear()
        self._peers[peer] = kind
        return kind

    def _unparsed(self, source: str, lineno: int, raw: str) -> None:
        if self.strict:
            raise UnreadableLine(source, lineno, raw.rstrip("\r\n"))
        self.stats.unparsed += 1
        if len(self.stats.examples) < 20:
            self.stats.examples.append((source, lineno, raw.rstrip("\r\n")[:200]))


def _id_like(token: str) -> bool:
    """Could this word of free text be a message ID (``MF7Q2K9X3A``, IceWarp's ``YAR93710``)?"""
    return len(token) >= 6 and token.isalnum() and token.isupper() and \
        any(c.isdigit() for c in token)


def _midnight(before: str, after: str) -> bool:
    """Whether an undated log's clock went back from ``before`` to ``after`` by so much that
    midnight passed (lines of interleaved sessions are only roughly in order)."""
    if len(before) != 8 or len(after) != 8:
        return False
    return (fmt.stamp_seconds(before) or 0) - (fmt.stamp_seconds(after) or 0) > _UNDATED_SPLIT


__all__ = ["IN", "OUT", "Message", "Reconstructor", "Record", "Source", "Stats",
           "UnreadableLine"]
