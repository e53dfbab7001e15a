"""``mailferry report`` without records: the log read straight into the report's counters.

Where it sits: cli.py's ``report`` uses it when no filter is given (filters test records, so
a filtered report takes the record path: reconstruct.py → report.Report.add). It reads the
same files through reader.py and fills the same :class:`report.Report`, and it must give
exactly the report the record path gives: it mirrors, step by step, reconstruct.py's splitting
into sessions and its join on message IDs, session.py's interpretation of a session and
records.py's / report.py's reading of a record, but keeps only what the report counts, in lists
and tuples (a Session object costs ~3.5 µs to build, a record dict far more), and never builds
a record. tests/unit/test_tracker_tally.py compares the JSON of both paths on the golden logs,
on damaged and fuzzed logs and on a generated log.

Why it is fast (``bench/trace_bench.py``, docs/tracking.md "Speed"):
- the reader's loop looks each line up by the fixed-width prefix of our logs (the peer padded
  to 15 columns and a 4-digit SID end at column 22), checks its stamp by comparing it with the
  last good one (one dict lookup when it changes) and buffers it; ``Connected`` /
  ``Disconnected`` lines of open sessions and the first line of a session take short branches
  instead of a full parse;
- a session is read once, when it closes. Most have one of two usual shapes (a delivery that
  connects, says EHLO, sends one message and quits; a served session that receives one): one
  regular expression over the session's joined text checks the shape and picks its fields in C
  (_delivery, _served). Any other session is read line by line by a lean copy of
  session.Session.replay (_interpret) that classifies a line by one dict lookup of its first
  8 characters;
- times are ints (seconds, ``day * 86400 + time of day``), recipients and transactions lists,
  and a message is counted (report.Report.add's arithmetic) without building its record.
Whatever the lean copy does not handle — replies to re-pair because lines are missing, BDAT,
stamps of another shape, a RCPT reply without its command — raises :class:`_Unusual`, and that
one session is rebuilt by session.Session itself and converted: exactness is never traded for
speed, rare sessions are only slower.

Memory is bounded like reconstruct.py's (20,000 open sessions, 50,000 unfinished messages, with
the same eviction, counted in ``evicted``), plus report.Report's counters.
It must not: build records, print, or import the server's packages.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import re
from collections.abc import Iterable
from datetime import date

from mailferry.tracker import reader, records
from mailferry.tracker import report as report_mod
from mailferry.tracker.reconstruct import (
    STAMPS,
    Source,
    Stats,
    UnreadableLine,
    _id_like,
    _midnight,
    stamp_value,
)
from mailferry.tracker.session import (
    END_OF_DATA,
    IN,
    OUT,
    Session,
    When,
    _expected_verb,
    _is_reply,
    _path,
)
from mailferry.txlog import format as fmt

# -- the lean shapes (lists indexed by these names; see the module docstring for why) --------
# An open session, as the reader knows it before interpreting it. S_MIXED: its buffer holds
# more than plain lines (a day marker, a (stamp, body) pair): Session interprets it.
S_OFF, S_START, S_CONN, S_FIRST, S_PEER, S_SID, S_SOURCE, S_LINENO, S_MIXED = range(9)
# A transaction (session.Txn): what the join and the report read of it. Times (T_START, T_END)
# are ints, or the When of a session rebuilt by Session (see _seconds_of / _hour_of); T_SIZE is
# the digits as logged, or an int (made an int only for the messages counted as received).
T_STATUS, T_MSGID, T_SENDER, T_SIZE, T_START, T_END, T_RCPTS, T_REASON, T_REPLY, T_SUMM, \
    T_OK, T_TLS, T_AUTH = range(13)  # T_SUMM: it has *** lines; T_OK: one of them says OK
# T_TLS, T_AUTH: how the session stood at MAIL FROM (session.Txn.tls / .auth_user), read only
# for served sessions (the report counts them for received messages).
# A recipient (session.Rcpt); R_KEY is the address in lower case, the join's key.
R_ADDR, R_KEY, R_REPLY, R_ACC, R_ROUTE, R_STATUS = range(6)
# A closed session, as the join keeps it (a tuple): the client's address, when it began (a
# When), a refusal of the whole session, its free text, and the reply that explains a failed
# delivery when no reply does (records.apply_delivery).
V_PEER, V_START, V_REJECT, V_NOTES, V_FALLBACK = range(5)
# A message being assembled (reconstruct.Message): M_IN is (session, transaction) of its
# receipt, M_DELIVERIES the transactions of its deliveries.
M_ID, M_IN, M_DELIVERIES, M_FATES, M_BOUNCE, M_BOUNCE_OF, M_EMITTED = range(7)
# What delivery made of one recipient (the fate dicts of records.apply_delivery).
F_STATUS, F_ATTEMPTS, F_DEFERRALS, F_WHEN, F_REPLY = range(5)

Time = int | When

OPEN = "open"
_FATE = {"OK": "delivered", "DEFERRED": "deferred", "FAILED": "failed", "REJECTED": "failed"}
_SERVED_SUMMARY = {"OK": "accepted", "DEFERRED": "tempfailed"}  # else "rejected"
_TERMINAL = frozenset(("delivered", "failed"))
_NOT_RECEIVED = frozenset(("rejected", "aborted", "incomplete"))
_REFUSED = frozenset(("refused", "rejected", "tempfailed"))
_COUNTED = {"delivered": "recipients_delivered", "deferred": "recipients_deferred",
            "failed": "recipients_failed", "queued": "recipients_queued"}
_GREETINGS = frozenset(("220", "421", "554"))
_DISCONNECTED = fmt.DISCONNECTED + "\n"  # buffered lines always end with their newline
_START_PROCESSING = fmt.START_PROCESSING + "\n"
_DATED = 100_000  # records._DATED: days at or above are date ordinals, below undated offsets
# Our own logs: the peer padded to 15 columns and a 4-digit SID put "] " at 21 and the stamp at
# 23, for every session. Lines of other widths (IPv6 peers, 8-digit SIDs) take the search.
_KEY = 22
_HEX = "0123456789ABCDEFabcdef"
_CACHE = 1 << 17  # bound of the small caches (stamps, openings, hours, reasons, free text)


class _Unusual(Exception):
    """Raised by the lean interpretation of a session it does not handle: Session does it."""


# -- stamps -------------------------------------------------------------------------------------
# reconstruct.STAMPS: " HH:MM:SS " → seconds of the day, or -1 for a stamp of another shape (its
# line then takes the careful path, and Session interprets its session). One dict lookup checks
# a line's stamp in the reader and gives its time in the interpreter.
_STAMPS = STAMPS
_stamp = stamp_value


class Tally:
    """Feed it the batches of lines of each file (:meth:`feed`), then :meth:`finish`; the
    counters end up in ``report`` (a :class:`report.Report`), the reading statistics in
    :attr:`stats` — both as reconstruct.Reconstructor + Report.add would leave them."""

    def __init__(self, report: report_mod.Report, *, strict: bool = False,
                 max_open: int = 20_000, max_pending: int = 50_000) -> None:
        self.report = report
        self.strict = strict
        self.max_open = max_open  # the bounds of reconstruct.Reconstructor, with the same effect
        self.max_pending = max_pending
        self.stats = Stats()
        self._open: dict[str, list] = {}
        self._bufs: dict[str, list] = {}
        self._cur_day: int | None = None
        self._msgs: dict[str, list] = {}
        self._bounce_of: dict[str, str] = {}
        self._mentions: dict[str, str] = {}
        self._peers: dict[str, str] = {}
        self._heads: dict[str, str] = {}  # a line's first 17 characters → its IP peer, or ""
        self._day = 0
        self._last_stamp = ""
        self._hours: dict[int, str] = {}  # hour number (seconds // 3600) → "YYYY-MM-DD HH"
        self._reasons: dict[str, str] = {}  # reply → report.reason_key(reply)

    # -- input ----------------------------------------------------------------------------------
    def feed(self, batches: Iterable[list[str]], source: Source) -> None:
        """Read the lines of one file, in lists (reader.batches_of). Sessions stay open across
        files. Same decisions as Reconstructor.feed, line for line, in fewer operations."""
        dated = source.day is not None
        day = source.day if dated else self._day
        self._set_day(day)
        get = self._bufs.get
        stamps = _STAMPS
        good = stamps.get
        stamp_at = fmt.FAST_STAMP.match
        slow = self._line
        name = source.name
        last_stamp = self._last_stamp
        known = " 00:00:00 "  # the last stamp (with its spaces) found good, at column 22
        # Line numbers are only needed by the careful paths (a session's first line, unread
        # lines): counted from the position in the batch there, not for every line.
        before = 0  # lines of the batches before this one
        batch: list[str] = []
        at = 0  # in batch: the position after the last line numbered
        raw = ""
        try:
            for batch in batches:
                at = 0
                # Only the last line of a file can lack its newline. With one, every line whose
                # stamp is well formed has a character after it (its body, or the newline), and
                # nothing else changes: lines are only ever read without their newline.
                if batch[-1][-1:] != "\n":
                    batch[-1] += "\n"
                for raw in batch:
                    buf = get(raw[:_KEY])
                    if buf is not None:
                        # Most lines carry the stamp of the line before: a comparison is
                        # cheaper than a lookup.
                        stamp = raw[22:32]
                        if stamp == known:
                            fast = True
                        else:
                            t = good(stamp)
                            if t is None:
                                t = _stamp(stamp)
                            fast = t >= 0
                            if fast:
                                known = stamp
                        if fast:
                            if not dated:
                                stamp = raw[23:31]
                                if stamp < last_stamp and _midnight(last_stamp, stamp):
                                    day += 1
                                    self._set_day(day)
                                last_stamp = stamp
                            c = raw[32]
                            if c != "C" and c != "D":
                                buf.append(raw)
                                continue
                            buf.append(raw)
                            if c == "D":
                                if raw[32:] == _DISCONNECTED:
                                    key = raw[:_KEY]
                                    del self._bufs[key]
                                    self._ended(self._open.pop(key), buf, True)
                                continue  # other D… lines (DNS query …): only buffered
                            if raw[32:41] != fmt.CONNECTED or self._connected(raw, 21, buf):
                                continue  # (Connecting to …, Client …: only buffered)
                    else:
                        e = raw.find("] ")
                        if e == 21:  # our width, and no session open: maybe one begins
                            t = good(raw[22:32])
                            if t is None:
                                t = _stamp(raw[22:32])
                            if t >= 0:
                                at = _index(batch, raw, at)
                            if t >= 0 and self._begin(raw, before + at, name, day):
                                if not dated:
                                    stamp = raw[23:31]
                                    if stamp < last_stamp and _midnight(last_stamp, stamp):
                                        day += 1
                                        self._set_day(day)
                                    last_stamp = stamp
                                continue
                        elif e > 0:  # another width
                            buf = get(raw[:e + 1])
                            if buf is not None and stamp_at(raw, e + 2) is not None:
                                if not dated:
                                    stamp = raw[e + 2:e + 10]
                                    if stamp < last_stamp and _midnight(last_stamp, stamp):
                                        day += 1
                                        self._set_day(day)
                                    last_stamp = stamp
                                c = raw[e + 11]
                                if c != "C" and c != "D":
                                    buf.append(raw)
                                    continue
                                buf.append(raw)
                                if c == "D":
                                    if raw[e + 11:] == _DISCONNECTED:
                                        key = raw[:e + 1]
                                        self._close(key, self._open[key], True)
                                    continue
                                if self._connected(raw, e, buf):
                                    continue
                    if not (at and batch[at - 1] is raw):  # (not numbered yet)
                        at = _index(batch, raw, at)
                    stamp = slow(raw, before + at, name, day)
                    if not dated and stamp:
                        if stamp < last_stamp and _midnight(last_stamp, stamp):
                            day += 1
                            self._set_day(day)
                        last_stamp = stamp
                before += len(batch)
                batch = []
        finally:
            if batch:  # stopped inside a batch (--strict): count up to the line that stopped it
                with contextlib.suppress(ValueError):  # (not if it stopped before its first)
                    before += at if at and batch[at - 1] is raw else _index(batch, raw, at)
            self.stats.lines += before
            if not dated:
                self._day = day
                self._last_stamp = last_stamp

    def _connected(self, raw: str, e: int, buf: list) -> bool:
        """A ``C…`` line of an open session, with a good stamp, just buffered (its body starts
        at e + 11). False when it must take the careful path instead: a Connected that begins
        a new session on a reused SID (then it is taken back off the buffer)."""
        if raw.startswith(fmt.CONNECTED, e + 11) and raw[e + 20] in ("\n", ","):
            s = self._open[raw[:e + 1]]
            if s[S_CONN] or self._has_protocol(buf, s):  # (this line is not protocol)
                buf.pop()
                return False  # _line closes this session and opens the new one
            s[S_CONN] = True
        return True  # other C… lines (Connecting to …, Client …): only buffered, as _line would

    def _begin(self, raw: str, lineno: int, source: str, day: int) -> bool:
        """The first line of a session in our width (its stamp checked, no session open under
        its prefix): what _line does with it, with split_line's checks done by position (the
        peer column once per distinct peer). False when the line needs _line after all
        (another peer kind, an odd shape)."""
        peer = self._heads.get(raw[:17])
        if peer is None:
            peer = self._head(raw[:17])
        sid = raw[17:21]
        c = raw[32]
        if not peer or sid.strip(_HEX) or c == "\n":
            return False  # SYSTEM, other logs, a bad SID; an empty body (kept as a pair): _line
        connected = c == "C" and raw.startswith(fmt.CONNECTED, 32) and raw[41] in ("\n", ",")
        disconnected = c == "D" and raw[32:] == _DISCONNECTED
        first = "connected" if connected else (
            "text" if c not in "<>*" and not disconnected else "protocol")
        key = raw[:_KEY]
        s = [23, (day, raw[23:31]), connected, first, peer, sid, source, lineno, False]
        opened = self._open
        opened[key] = s
        self._bufs[key] = [raw]
        if len(opened) > self.max_open:
            old_key = next(iter(opened))
            self.stats.evicted += 1
            self._close(old_key, opened[old_key], False)
        if disconnected:
            self._close(key, s, True)
        return True

    def _head(self, head: str) -> str:
        """The peer of a line's first 17 characters (peer, padding, "[") when split_line would
        read it so and it is an IP address, else "" (cached: a log has few peers)."""
        sp = head.find(" ")
        peer = head[:sp]
        ok = 0 < sp < 16 and head[sp:16] == " " * (16 - sp) and head[16] == "[" and \
            peer.isprintable() and (self._peers.get(peer) or self._peer_kind(peer)) == "ip"
        if len(self._heads) >= _CACHE:
            self._heads.clear()
        self._heads[head] = peer if ok else ""
        return peer if ok else ""

    def _set_day(self, day: int) -> None:
        """A new day: later lines of the open sessions carry it (a marker in their buffers)."""
        if day != self._cur_day:
            self._cur_day = day
            for buf in self._bufs.values():
                buf.append(day)
            for s in self._open.values():
                s[S_MIXED] = True

    def _line(self, raw: str, lineno: int, source: str, day: int) -> str | None:
        """Any line, the careful way (Reconstructor._line). Returns its stamp, or None."""
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
                self._free_text(body)
            else:
                stats.foreign += 1
            return stamp
        e = raw.find("] ")
        key = raw[:e + 1]
        s = self._open.get(key)
        c = body[:1]
        connected = c == "C" and (body == fmt.CONNECTED or body.startswith("Connected,"))
        if connected and s is not None and (
                s[S_CONN] or self._has_protocol(self._bufs.get(key, ()), s)):
            self._close(key, s, False)  # a new session reusing the SID of one never closed
            s = None
        if s is None:
            first = "connected" if connected else (
                "text" if c not in "<>*" and body != fmt.DISCONNECTED else "protocol")
            s = [e + 2, (day, stamp), False, first, peer, sid, source, lineno, False]
            self._new(key, s)
        if connected:
            s[S_CONN] = True
        buf = self._bufs[key]
        if len(stamp) == 8 and fmt.FAST_STAMP.match(raw, e + 2):
            buf.append(raw)
        else:
            buf.append((stamp, body))
            s[S_MIXED] = True
        if c == "D" and body == fmt.DISCONNECTED:
            self._close(key, s, True)
        return stamp

    @staticmethod
    def _has_protocol(buf: Iterable, s: list) -> bool:
        at = s[S_OFF] + 9
        for x in buf:
            if x.__class__ is str:
                c = x[at:at + 1]
            elif x.__class__ is tuple:
                c = x[1][:1]
            else:
                continue
            if c in ("<", ">", "*"):
                return True
        return False

    def _new(self, key: str, s: list) -> None:
        opened = self._open
        opened[key] = s
        self._bufs[key] = []
        if len(opened) > self.max_open:
            old_key = next(iter(opened))
            self.stats.evicted += 1
            self._close(old_key, opened[old_key], False)

    def finish(self) -> None:
        """End of input: close what is still open and count every story left."""
        for key, s in list(self._open.items()):
            self._close(key, s, False)
        msgs = self._msgs
        for m in list(msgs.values()):
            if not m[M_EMITTED] and m[M_BOUNCE_OF] is None:
                self._emit(m)
        for m in list(msgs.values()):
            if not m[M_EMITTED]:
                self._emit(m)
        msgs.clear()

    # -- one session ----------------------------------------------------------------------------
    def _close(self, key: str, s: list, disconnected: bool) -> None:
        if self._open.get(key) is s:
            del self._open[key]
        self._ended(s, self._bufs.pop(key, ()), disconnected)

    def _ended(self, s: list, buf: list | tuple, disconnected: bool) -> None:
        """A session that is no longer open (its Disconnected, the end of the input, a reused
        SID, eviction): read its lines, then join and count what it carried."""
        try:
            if s[S_MIXED]:
                raise _Unusual
            got = None
            if disconnected and s[S_OFF] == 23:
                c = buf[0][32]
                if c == "C":
                    got = _served(buf, s[S_START][0] * 86400)
                elif c == "D":
                    got = _delivery(buf, s[S_START][0] * 86400)
            direction, reject, txns, notes, fallback = got or _interpret(s, buf, disconnected)
        except _Unusual:
            direction, reject, txns, notes, fallback = _rebuild(s, buf, disconnected)
        for text in notes:
            if "ounce" in text or "DSN" in text:  # cheap test before the bounce-link regex
                self._free_text(text)
        stats = self.stats
        if not (disconnected and (s[S_CONN] or (s[S_FIRST] == "text" and direction is OUT))):
            stats.incomplete += 1
        seen = (s[S_PEER], s[S_START], reject, notes, fallback)
        msgs = self._msgs
        if direction is OUT:
            stats.sessions_out += 1
            carried = False
            for txn in txns:
                msgid = txn[T_MSGID]
                if msgid is None:
                    continue
                carried = True
                m = msgs.get(msgid)
                if m is None or m[M_EMITTED]:
                    m = self._message(msgid)
                m[M_DELIVERIES].append(txn)
                _apply_delivery(m[M_FATES], seen, txn)
                if txn[T_SENDER] == "" and m[M_BOUNCE_OF] is None:
                    self._link_bounce(m, seen)
                if m[M_BOUNCE_OF] is not None:
                    self._changed(m)
                elif self._final(m):  # (_changed, for a message that is not a bounce)
                    self._emit(m)
            if not carried:
                self._no_mail(seen, served=False)
            return
        stats.sessions_in += 1
        if not txns:
            self._no_mail(seen, served=True)
            return
        for txn in txns:
            msgid = txn[T_MSGID]
            if msgid is None or txn[T_STATUS] != "accepted":
                self._count((seen, txn), {}, False)
                continue
            m = msgs.get(msgid)
            if m is None or m[M_EMITTED]:
                m = self._message(msgid)
            m[M_IN] = (seen, txn)
            if txn[T_SENDER] == "" and m[M_BOUNCE_OF] is None:
                self._link_bounce(m, seen)
            if m[M_BOUNCE_OF] is not None:
                self._changed(m)
            elif self._final(m):  # (_changed, for a message that is not a bounce)
                self._emit(m)

    # -- the join (reconstruct.Reconstructor's, on lists) ---------------------------------------
    def _message(self, msgid: str) -> list:
        msgs = self._msgs
        m = msgs[msgid] = [msgid, None, [], {}, None, None, False]
        if msgid in self._bounce_of:
            self._set_bounce(msgid, self._bounce_of[msgid])
        if self._mentions:
            bounce = self._mentions.pop(msgid, None)
            if bounce is not None:
                self._set_bounce(bounce, msgid)
        if len(msgs) > self.max_pending:
            oldest = next(iter(msgs))
            self.stats.evicted += 1
            self._emit(msgs[oldest])
        return m

    def _link_bounce(self, m: list, seen: tuple) -> None:
        """A message from ``<>`` whose session mentions another message's ID is its bounce
        (the caller checked the sender and that ``m`` is not linked yet)."""
        tokens = [t for text in seen[V_NOTES]
                  for t in text.replace(":", " ").replace(",", " ").split() if _id_like(t)]
        msgs = self._msgs
        for token in tokens:
            other = msgs.get(token)
            if other is not None and other is not m and not other[M_EMITTED]:
                self._set_bounce(m[M_ID], other[M_ID])
                return
        for token in tokens[:4]:
            if token != m[M_ID]:
                if len(self._mentions) > self.max_pending:
                    self._mentions.pop(next(iter(self._mentions)))
                self._mentions[token] = m[M_ID]

    def _set_bounce(self, bounce: str, original: str) -> None:
        self._bounce_of[bounce] = original
        b = self._msgs.get(bounce)
        o = self._msgs.get(original)
        if b is not None and o is not None and b is not o and o[M_BOUNCE_OF] is None and \
                b[M_BOUNCE] is None and b[M_BOUNCE_OF] is None and o[M_BOUNCE] in (None, bounce):
            b[M_BOUNCE_OF] = original
            o[M_BOUNCE] = bounce

    def _free_text(self, text: str) -> None:
        link = fmt.parse_bounce(text)
        if link is not None and link[0] != link[1]:
            if len(self._bounce_of) > self.max_pending:
                self._bounce_of.pop(next(iter(self._bounce_of)))
            self._set_bounce(*link)

    def _changed(self, m: list) -> None:
        if m[M_BOUNCE_OF] is not None:
            original = self._msgs.get(m[M_BOUNCE_OF])
            if original is not None and not original[M_EMITTED]:
                self._changed(original)
                return
        if self._final(m):
            self._emit(m)

    def _final(self, m: list, alone: bool = True) -> bool:
        fates = m[M_FATES]
        inbound = m[M_IN]
        if inbound is not None:
            txn = inbound[1]
            for r in txn[T_RCPTS]:
                if r[R_STATUS] != "accepted":
                    continue
                fate = fates.get(r[R_KEY])
                if fate is None:
                    if r[R_ROUTE] != "local":
                        return False  # relayed, and no delivery seen yet
                elif fate[F_STATUS] not in _TERMINAL:
                    return False
            sender = txn[T_SENDER]
        else:
            if alone and m[M_BOUNCE_OF] is None:
                return False
            if not fates or any(f[F_STATUS] not in _TERMINAL for f in fates.values()):
                return False
            deliveries = m[M_DELIVERIES]  # their transactions
            sender = deliveries[0][T_SENDER] if deliveries else None
        if sender:
            for f in fates.values():
                if f[F_STATUS] == "failed":
                    # A bounce follows: the story ends with the bounce's own delivery.
                    b = self._msgs.get(m[M_BOUNCE]) if m[M_BOUNCE] else None
                    return b is not None and self._final(b, alone=False)
        return True

    def _emit(self, m: list) -> None:
        if m[M_EMITTED]:
            return
        m[M_EMITTED] = True
        msgs = self._msgs
        msgs.pop(m[M_ID], None)
        bounce = msgs.get(m[M_BOUNCE]) if m[M_BOUNCE] else None
        if bounce is not None:
            bounce[M_EMITTED] = True
            msgs.pop(bounce[M_ID], None)
        self._count(m[M_IN], m[M_FATES], bounce is not None)

    # -- counting: report.Report.add of the record records.py would build ------------------------
    def _no_mail(self, seen: tuple, served: bool) -> None:
        """A ``session`` record: no mail received or delivered in it."""
        rep = self.report
        rep.totals["sessions_without_mail"] += 1
        reject = seen[V_REJECT]
        if reject:
            rep.totals["connections_rejected"] += 1
            rep.rejections[self._reason(reject)] += 1
        if served:  # an outgoing session's record has no "session" (it is in "deliveries")
            rep.clients[seen[V_PEER]] += 1

    def _count(self, inbound: tuple | None, fates: dict[str, list], bounced: bool) -> None:
        """A ``message`` record (records.message_record, then Report.add). The common case, a
        message received and accepted, is counted here; the others by _count_other."""
        if inbound is None or inbound[1][T_STATUS] != "accepted":
            self._count_other(inbound, fates, bounced)
            return
        seen, txn = inbound
        rep = self.report
        t = rep.totals
        hours = self._hours
        rep.clients[seen[V_PEER]] += 1
        t["messages_received"] += 1
        size = txn[T_SIZE]
        t["bytes_received"] += int(size) if size else 0  # digits (lean) or an int
        sender = txn[T_SENDER]
        key = sender if sender else "<>"
        rep.senders[key] += 1
        rep.sender_domains[key.rpartition("@")[2] or "<>"] += 1
        start = txn[T_START]
        if start is None:
            start = seen[V_START]
        hour = hours.get(start // 3600) if start.__class__ is int else None
        if hour is None:
            hour = self._hour_of(start)
        if hour:
            rep.received_per_hour[hour] += 1
        if txn[T_TLS]:
            t["messages_tls"] += 1
        user = txn[T_AUTH]
        if user:
            t["messages_authenticated"] += 1
            rep.authenticated_users[user] += 1
        received_at = None
        matched = 0
        for r in txn[T_RCPTS]:
            addr = r[R_KEY]
            fate = fates.get(addr) if fates else None
            if fate is None:
                st = r[R_STATUS]
                if st == "accepted":  # the message was received: the recipient's turn
                    st = "delivered" if r[R_ROUTE] == "local" else "queued"
                elif st in _REFUSED:
                    t["recipients_refused"] += 1
                    if r[R_REPLY] and st == "refused":
                        rep.rejections[self._reason(r[R_REPLY])] += 1
                    continue
                rep.recipients[addr] += 1
                rep.recipient_domains[addr.rpartition("@")[2]] += 1
                counted = _COUNTED.get(st)
                if counted is not None:
                    t[counted] += 1
                continue
            matched += 1
            st = fate[F_STATUS]  # delivered, deferred or failed
            rep.recipients[addr] += 1
            rep.recipient_domains[addr.rpartition("@")[2]] += 1
            t[_COUNTED[st]] += 1
            if fate[F_DEFERRALS]:
                t["deferrals"] += fate[F_DEFERRALS]
            if st == "delivered":
                if fate[F_ATTEMPTS]:
                    when = fate[F_WHEN]
                    hour = hours.get(when // 3600) if when.__class__ is int else None
                    if hour is None:
                        hour = self._hour_of(when)
                    if hour:
                        rep.delivered_per_hour[hour] += 1
                    if received_at is None:
                        received_at = _seconds_of(txn[T_END])
                    done = when if when.__class__ is int else _seconds_of(when)
                    if done is not None and received_at is not None:
                        rep.delays[done - received_at] += 1
            elif st == "failed" and fate[F_REPLY]:
                rep.failures[self._reason(fate[F_REPLY])] += 1
        if len(fates) > matched:  # recipients known only from deliveries (distinct keys)
            keys = {r[R_KEY] for r in txn[T_RCPTS]}
            for addr, fate in fates.items():
                if addr not in keys:
                    self._count_fate(addr, fate, True)
        if bounced:
            t["bounces_sent"] += 1

    def _count_fate(self, addr: str, fate: list, received: bool) -> None:
        """A recipient known only from deliveries (no reply to RCPT, no time of receipt)."""
        rep = self.report
        t = rep.totals
        st = fate[F_STATUS]
        if received:
            rep.recipients[addr] += 1
            rep.recipient_domains[addr.rpartition("@")[2]] += 1
        t[_COUNTED[st]] += 1
        if fate[F_DEFERRALS]:
            t["deferrals"] += fate[F_DEFERRALS]
        if st == "failed" and fate[F_REPLY]:
            rep.failures[self._reason(fate[F_REPLY])] += 1
        if st == "delivered" and fate[F_ATTEMPTS]:
            hour = self._hour_of(fate[F_WHEN])
            if hour:
                rep.delivered_per_hour[hour] += 1

    def _count_other(self, inbound: tuple | None, fates: dict[str, list],
                     bounced: bool) -> None:
        """_count of a message not accepted (rejected, aborted, incomplete …) or known only
        from its deliveries: the general form, line for line records._rcpt + Report.add."""
        rep = self.report
        t = rep.totals
        # The recipients as the record lists them, (address, reply to RCPT, status, fate, timed):
        # the transaction's first, then those only known from deliveries. Only the first have
        # a delivery delay (they have a time of receipt).
        rows: list[tuple] = []
        txn = None
        if inbound is not None:
            seen, txn = inbound
            rep.clients[seen[V_PEER]] += 1
            status = txn[T_STATUS]
            queued = status == "accepted"
            matched = 0
            for r in txn[T_RCPTS]:
                fate = fates.get(r[R_KEY]) if fates else None
                st = r[R_STATUS]
                if fate is not None:
                    st = fate[F_STATUS]
                    matched += 1
                elif st == "accepted" and queued:
                    st = "delivered" if r[R_ROUTE] == "local" else "queued"
                rows.append((r[R_KEY], r[R_REPLY], st, fate, True))
            if len(fates) > matched:  # (a transaction's recipients are distinct keys)
                keys = {row[0] for row in rows}
                rows += [(k, None, f[F_STATUS], f, False) for k, f in fates.items()
                         if k not in keys]
            received = status not in _NOT_RECEIVED
        else:
            rows = [(k, None, f[F_STATUS], f, False) for k, f in fates.items()]
            # records._status of a story known only from its deliveries
            states = {row[2] for row in rows}
            status = "failed" if "failed" in states else "deferred" if "deferred" in states \
                else "delivered" if "delivered" in states else "incomplete"
            received = False
        if status == "rejected":
            t["messages_rejected"] += 1
            reason = txn[T_REASON]  # type: ignore[index]
            # Refused at RCPT: each refusal is counted with its recipient, not twice.
            if not any(row[2] == "refused" and row[1] == reason for row in rows):
                rep.rejections[self._reason(reason or "?")] += 1
        elif status == "aborted":
            t["transactions_aborted"] += 1
        elif status == "incomplete":
            t["transactions_incomplete"] += 1
        received_at = None
        if received:
            t["messages_received"] += 1
            size = txn[T_SIZE]  # type: ignore[index]
            t["bytes_received"] += int(size) if size else 0  # digits (lean) or an int
            sender = txn[T_SENDER]  # type: ignore[index]
            key = sender if sender else "<>"
            rep.senders[key] += 1
            rep.sender_domains[key.rpartition("@")[2] or "<>"] += 1
            start = txn[T_START]  # type: ignore[index]
            hour = self._hour_of(seen[V_START] if start is None else start)
            if hour:
                rep.received_per_hour[hour] += 1
            if txn[T_TLS]:  # type: ignore[index]
                t["messages_tls"] += 1
            user = txn[T_AUTH]  # type: ignore[index]
            if user:
                t["messages_authenticated"] += 1
                rep.authenticated_users[user] += 1
        for addr, reply, st, fate, timed in rows:
            if st in _REFUSED:
                t["recipients_refused"] += 1
                if reply and st == "refused":
                    rep.rejections[self._reason(reply)] += 1
                continue
            if received:
                rep.recipients[addr] += 1
                rep.recipient_domains[addr.rpartition("@")[2]] += 1
            counted = _COUNTED.get(st)
            if counted is not None:
                t[counted] += 1
            if fate is None:
                continue
            if fate[F_DEFERRALS]:
                t["deferrals"] += fate[F_DEFERRALS]
            if st == "failed" and fate[F_REPLY]:
                rep.failures[self._reason(fate[F_REPLY])] += 1
            if st == "delivered" and fate[F_ATTEMPTS]:
                when = fate[F_WHEN]
                hour = self._hour_of(when)
                if hour:
                    rep.delivered_per_hour[hour] += 1
                if timed:
                    if received_at is None:
                        received_at = _seconds_of(txn[T_END])  # type: ignore[index]
                    done = _seconds_of(when)
                    if done is not None and received_at is not None:
                        rep.delays[done - received_at] += 1
        if bounced:
            t["bounces_sent"] += 1

    def _hour_of(self, when: Time | None) -> str | None:
        """report._hour(records.iso(when)): ``2026-11-28 10``, or ``10`` for undated logs."""
        if when.__class__ is not int:
            return report_mod._hour(records.iso(when))  # type: ignore[arg-type]
        h = when // 3600  # type: ignore[operator]
        got = self._hours.get(h)
        if got is None:
            if len(self._hours) >= _CACHE:
                self._hours.clear()
            day = when // 86400  # type: ignore[operator]
            got = f"{h % 24:02d}" if day < _DATED else \
                f"{date.fromordinal(day).isoformat()} {h % 24:02d}"
            self._hours[h] = got
        return got

    def _reason(self, reply: str) -> str:
        got = self._reasons.get(reply)
        if got is None:
            if len(self._reasons) >= _CACHE:
                self._reasons.clear()
            got = self._reasons[reply] = report_mod.reason_key(reply)
        return got

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


def _index(batch: list[str], raw: str, at: int) -> int:
    """1 + the position of ``raw`` (this very object) in ``batch``, searched from ``at``."""
    i = batch.index(raw, at)
    while batch[i] is not raw:  # an equal line before it
        i = batch.index(raw, i + 1)
    return i + 1


def _seconds_of(when: Time | None) -> int | None:
    """records.seconds, for an int time or a When."""
    if when.__class__ is int:
        return when  # type: ignore[return-value]
    return records.seconds(when)  # type: ignore[arg-type]


# -- interpreting one session -------------------------------------------------------------------
# What a line is, from the first 8 characters of its body, once the session's direction is known
# (cached per direction: a log has few distinct openings). Lines that need more than their opening
# to be told apart, and every line before the direction is known, take the general code.
A_GENERIC, A_REPLY, A_SKIP, A_TEXT, A_MAIL, A_RCPT, A_SUMMARY, A_DISCONNECTED, A_START, \
    A_CONNECTED, A_BYTES, A_LOOKUP = range(12)
# A command that needs nothing but its place among the pending ones is A_COMMAND + the index of
# its pending entry, (verb, None), in _COMMANDS (ints all the way: comparing an int with another
# type costs several times more, and this chain runs for every line).
A_COMMAND = 100
_COMMANDS: list[tuple[str, None]] = []
_ACTIONS: dict[str | None, dict[str, int]] = {IN: {}, OUT: {}, None: {}}
_END_OF_DATA = (END_OF_DATA, None)  # the pending entry the 354 reply puts first
# Free text of outgoing sessions that Session.text parses (MX lookups, connection attempts):
# its text → (parsed, error). Such lines repeat (a few domains and MX hosts take most mail).
_LOOKUPS: dict[str, tuple[bool, str | None]] = {}


def _action(opening: str, direction: str) -> int:
    """What a line whose body begins with ``opening`` (8 characters) is (A_…). Mirrors
    Session.replay's tests."""
    if len(opening) < 8 or "\n" in opening:
        return A_GENERIC  # a short body: the general code slices it exactly
    if opening[0] == (">" if direction is IN else "<") and opening[7] == "-":
        return A_SKIP  # a "250-…" continuation (replay skips these before anything else)
    head = opening[:4]
    if head == ">>> " or head == "<<< ":
        if (head == ">>> ") == (direction is IN):
            return A_REPLY  # (a reply that is a "N bytes" line is caught by its ")")
        word = opening[4:]
        if word[0].isdecimal():  # (what \d matches)
            return A_BYTES  # "N bytes (…)", or else a command: the general code
        if word == fmt.SECRET:
            return A_GENERIC  # the hidden lines of AUTH, unless there is more on the line
        verb = word.upper()
        if verb == "MAIL":
            return A_MAIL
        if verb == "RCPT":
            return A_RCPT
        if verb in ("RSET", "BDAT", "STAR", "AUTH"):
            # (STAR: Session names the verb STARTTLS only when it is one; AUTH: a new attempt
            # forgets a refused one)
            return A_GENERIC
        entry = (verb, None)  # what goes on the pending list, made once per verb
        if entry not in _COMMANDS:
            _COMMANDS.append(entry)
        return A_COMMAND + _COMMANDS.index(entry)
    if head == fmt.SUMMARY:
        return A_SUMMARY
    if opening == "Disconne":
        return A_DISCONNECTED
    if opening == "Start of":
        return A_START
    if opening == "Connecte":
        return A_CONNECTED
    if opening in ("Connecti", "DNS quer"):
        return A_LOOKUP
    return A_TEXT


def _lookup(body: str) -> tuple[bool, str | None]:
    """Session.text's parse of ``DNS query MX …`` / ``Connecting to …``: (parsed, error)."""
    got = _LOOKUPS.get(body)
    if got is None:
        parsed = fmt.parse_dns_mx(body) if body.startswith("DNS query MX ") else \
            fmt.parse_connecting(body) if body.startswith("Connecting to ") else None
        got = (True, parsed[-1]) if parsed else (False, None)
        if len(_LOOKUPS) >= _CACHE:
            _LOOKUPS.clear()
        _LOOKUPS[body] = got
    return got


def _interpret(s: list, buf: list | tuple, disconnected: bool) -> tuple:
    """session.Session.replay + close on lists: (direction, reject, txns, notes, fallback
    reply). Raises _Unusual for what this copy does not handle (then _rebuild does it).

    The hottest code of ``report`` after the reader's loop: one pass over the session's lines,
    locals only. Once the direction is known, a line is classified by one dict lookup of its
    opening (:func:`_action`) and the common kinds are handled right there; the rest, and the
    first lines, take the general code below them, a copy of Session.replay's."""
    off = s[S_OFF]
    off1 = off - 1  # the stamp with the spaces around it: a key of _STAMPS
    o9 = off + 9
    boff = off + 9  # where the body starts
    b4 = boff + 4
    b7 = boff + 7
    b8 = boff + 8
    base = s[S_START][0] * 86400  # the day's first second (the session has one day)
    clock = _STAMPS.get
    direction = None
    actions = _ACTIONS[None]  # empty: everything takes the general code until the direction
    skip = ""  # the first character of replies, once the direction is known
    pending: list[tuple[str, list | None]] = []  # commands awaiting their reply (pipelining)
    txn: list | None = None
    txns: list[list] = []
    greeting = False
    reject = None
    notes: list[str] = []
    # Session.tls / .auth_ok, as of the last note read (``checked``): notes are read for them
    # only when it matters (a MAIL FROM of a served session, an AUTH reply), once each.
    tls = False
    auth_ok: bool | str | None = None
    checked = 0
    attempt_error = mx_error = None
    last = None
    summary_at = fmt.SUMMARY_AT.match
    commands = _COMMANDS
    for x in buf:  # plain lines only (S_MIXED)
        opening = x[boff:b8]
        a = actions.get(opening)
        if a is None:
            if direction is None:
                a = A_GENERIC
            else:
                if len(actions) >= _CACHE:
                    actions.clear()
                a = actions[opening] = _action(opening, direction)
        # -- the common lines, by their opening ---------------------------------------------
        if a == A_REPLY:
            if x[-2] != ")":  # (else maybe "N bytes (…)": the general code)
                if pending:
                    last = x
                    verb, arg = pending[0]
                    if verb == "AUTH" and opening[4:7] == "334":
                        continue  # the AUTH exchange goes on
                    if len(pending) > 1:
                        expect = _expected_verb(opening[4:7], x[b4:-1])
                        if expect is not None and verb != expect:
                            raise _Unusual  # replies lost from the log: Session re-pairs them
                    del pending[0]
                    if arg is not None:  # RCPT (a recipient) or MAIL (a transaction)
                        if verb == "RCPT":
                            text = x[b4:-1]
                            ok = opening[4] == "2"
                            arg[R_REPLY] = text
                            arg[R_ACC] = ok
                            if direction is IN:
                                if ok:
                                    arg[R_STATUS] = "accepted"
                                    arg[R_ROUTE] = "relay" if "will forward" in text else "local"
                                else:
                                    arg[R_STATUS] = "refused"
                            else:
                                arg[R_STATUS] = "accepted" if ok else (
                                    "deferred" if opening[4] == "4" else "refused")
                        elif opening[4] != "2":
                            t = clock(x[off1:o9])
                            if t is None or t < 0:
                                t = _clock(x[off1:o9])
                            arg[T_STATUS] = "rejected"
                            arg[T_REASON] = x[b4:-1]
                            arg[T_END] = base + t
                    elif verb == "DATA":
                        if txn is not None:
                            if opening[4:7] == "354":
                                pending.insert(0, _END_OF_DATA)
                            elif txn[T_STATUS] == OPEN:
                                t = clock(x[off1:o9])
                                if t is None or t < 0:
                                    t = _clock(x[off1:o9])
                                txn[T_STATUS] = "rejected"
                                txn[T_REASON] = x[b4:-1]
                                txn[T_END] = base + t
                    elif verb == END_OF_DATA:
                        if txn is not None:
                            t = clock(x[off1:o9])
                            if t is None or t < 0:
                                t = _clock(x[off1:o9])
                            _data_done(txn, x[b4:-1], base + t, direction)
                    elif direction is OUT and (verb == "EHLO" or verb == "HELO") and \
                            opening[4] != "2":
                        reject = reject or x[b4:-1]
                    elif verb == "AUTH":
                        if len(notes) > checked:
                            tls, auth_ok = _standing(notes, checked, tls, auth_ok)
                            checked = len(notes)
                        auth_ok = (auth_ok if auth_ok.__class__ is str else True) \
                            if opening[4] == "2" else False
                    elif verb == "STARTTLS":
                        tls = tls or opening[4:7] == "220"
                    continue
                code = opening[4:7]
                if not greeting and txn is None and code in _GREETINGS:
                    last = x
                    greeting = True
                    if code != "220":
                        reject = x[b4:-1]
                    continue
                # other replies that answer no command: the general code
        elif a == A_SKIP:
            continue
        elif a >= A_COMMAND:  # a command with nothing to read but its verb
            last = x
            pending.append(commands[a - A_COMMAND])
            continue
        elif a == A_TEXT:
            last = x
            notes.append(x[boff:-1])
            continue
        elif a == A_MAIL:
            t = clock(x[off1:o9])
            if t is None or t < 0:
                t = _clock(x[off1:o9])
            last = x
            if txn is not None and txn[T_STATUS] == OPEN:
                _end_txn(txn, None, base + t, direction)
            i = x.find("<", b4)  # session._path, in place
            if i >= 0:
                j = x.find(">", i)
                sender = x[i + 1:j] if j > 0 else x[i + 1:-1]
            else:
                sender = _path(x[b4:-1])
            txn = [OPEN, None, sender, None, base + t, None, [], None, None, False, False,
                   False, None]
            txns.append(txn)
            pending.append(("MAIL", txn))
            if direction is IN:
                checked, tls, auth_ok = _mark_standing(txn, notes, checked, tls, auth_ok)
            continue
        elif a == A_RCPT:
            last = x
            if txn is None or txn[T_STATUS] != OPEN:
                txn = [OPEN, None, None, None, None, None, [], None, None, False, False,
                       False, None]
                txns.append(txn)  # the log began after MAIL FROM
            i = x.find("<", b4)
            if i >= 0:
                j = x.find(">", i)
                address = x[i + 1:j] if j > 0 else x[i + 1:-1]
            else:
                address = _path(x[b4:-1])
            address = address or x[b4 + 8:-1].strip()
            key = address.lower()  # Txn.rcpt: one entry per address, whatever its case
            for r in txn[T_RCPTS]:
                if r[R_KEY] == key:
                    break
            else:
                r = [address, key, None, None, None, "pending"]
                txn[T_RCPTS].append(r)
            pending.append(("RCPT", r))
            continue
        elif a == A_SUMMARY:
            f = summary_at(x, b4)
            if f is not None:
                t = clock(x[off1:o9])
                if t is None or t < 0:
                    t = _clock(x[off1:o9])
                last = x
                now = base + t
                sender, rcpt, size, status, msgid = f.group(1, 2, 4, 6, 7)
                key = rcpt.lower()
                tx = txn
                if tx is None and txns:
                    # A transaction already ended (RSET after refused recipients …): its ***
                    # lines still belong to it when they name one of its recipients.
                    prev = txns[-1]
                    if (prev[T_MSGID] is None or prev[T_MSGID] == msgid) and any(
                            r[R_KEY] == key for r in prev[T_RCPTS]):
                        tx = prev
                if tx is None or (tx[T_MSGID] is not None and msgid and tx[T_MSGID] != msgid):
                    tx = txn = [OPEN, None, sender, None, now if direction is OUT else None,
                                None, [], None, None, False, False, False, None]
                    txns.append(tx)
                if tx[T_SENDER] is None:
                    tx[T_SENDER] = sender
                tx[T_SUMM] = True
                if status == "OK":
                    tx[T_OK] = True
                if msgid and tx[T_MSGID] is None:
                    tx[T_MSGID] = msgid
                tx[T_SIZE] = size  # digits: made an int when counted (most are overwritten)
                for r in tx[T_RCPTS]:
                    if r[R_KEY] == key:
                        break
                else:
                    r = [rcpt, key, None, None, None, "pending"]
                    tx[T_RCPTS].append(r)
                r[R_STATUS] = status if direction is OUT else \
                    _SERVED_SUMMARY.get(status, "rejected")
                tx[T_END] = now
                continue
        elif a == A_BYTES:
            if x[-2] == ")":
                m = fmt.BYTES_AT.match(x, b4)
                if m is not None:
                    last = x
                    if txn is not None and txn[T_SIZE] is None:
                        txn[T_SIZE] = m[1]
                    continue
        elif a == A_DISCONNECTED:
            if x[boff:] == _DISCONNECTED:
                last = x
                continue
        elif a == A_START:
            if x[boff:] == _START_PROCESSING:
                last = x
                continue
        elif a == A_CONNECTED:
            ending = x[b8:b8 + 2]
            if ending == "d\n" or ending == "d,":  # Connected: direction known, nothing new
                last = x
                continue
        elif a == A_LOOKUP:
            body = x[boff:-1]
            parsed, error = _lookup(body)
            last = x
            if parsed:
                if error:
                    if body[0] == "D":
                        mx_error = error
                    else:
                        attempt_error = error
            else:
                notes.append(body)
            continue
        # -- the general code: Session.replay for any line ------------------------------------
        if x[boff] == skip and x[b7:b8] == "-":
            continue  # "250-…": the last line of a reply carries its outcome
        last = x
        head = x[boff:b4]
        if head == ">>> " or head == "<<< ":
            text = x[b4:-1]  # every buffered line ends with its newline (Tally.feed)
            ours = head == ">>> "
            if direction is None:
                direction = IN if ours == _is_reply(text) else OUT
                skip = ">" if direction is IN else "<"
                actions = _ACTIONS[direction]
            if text[-4:] == "B/s)":
                n = fmt.parse_bytes(text)
                if n:
                    if txn is not None and txn[T_SIZE] is None:
                        txn[T_SIZE] = n[0]
                    continue
            if ours == (direction is IN):  # a reply
                if len(text) > 3 and text[3] == "-":
                    continue
                code = text[:3]
                if not pending:
                    if not greeting and txn is None and code in _GREETINGS:
                        greeting = True
                        if code != "220":
                            reject = text
                    elif code[:1] in ("4", "5"):
                        if txn is not None and txn[T_STATUS] == OPEN and txn[T_SUMM]:
                            _data_done(txn, text, _time(x, off1, base), direction)
                        else:
                            reject = reject or text
                    elif code == "250" and "Recipient ok" in text and "<" in text:
                        raise _Unusual  # the reply to a RCPT from before the log began
                    elif code == "250" and txn is not None and txn[T_STATUS] == OPEN:
                        _data_done(txn, text, _time(x, off1, base), direction)
                    continue
                verb, arg = pending[0]
                if code == "334" and verb == "AUTH":
                    continue
                if len(pending) > 1:
                    expect = _expected_verb(code, text)
                    if expect is not None and verb != expect:
                        raise _Unusual
                del pending[0]
                ok = code[:1] == "2"
                if verb == "RCPT":
                    arg[R_REPLY] = text  # type: ignore[index]
                    arg[R_ACC] = ok  # type: ignore[index]
                    if direction is IN:
                        arg[R_STATUS] = "accepted" if ok else "refused"  # type: ignore[index]
                        if ok:
                            arg[R_ROUTE] = (  # type: ignore[index]
                                "relay" if "will forward" in text else "local")
                    else:
                        arg[R_STATUS] = "accepted" if ok else (  # type: ignore[index]
                            "deferred" if code[:1] == "4" else "refused")
                elif verb == "MAIL":
                    if not ok:
                        arg[T_STATUS] = "rejected"  # type: ignore[index]
                        arg[T_REASON] = text  # type: ignore[index]
                        arg[T_END] = _time(x, off1, base)  # type: ignore[index]
                elif verb == "DATA":
                    if txn is not None:
                        if code == "354":
                            pending.insert(0, _END_OF_DATA)
                        elif txn[T_STATUS] == OPEN:
                            txn[T_STATUS] = "rejected"
                            txn[T_REASON] = text
                            txn[T_END] = _time(x, off1, base)
                elif verb == END_OF_DATA:
                    if txn is not None:
                        _data_done(txn, text, _time(x, off1, base), direction)
                elif (verb == "EHLO" or verb == "HELO") and not ok and direction is OUT:
                    reject = reject or text
                elif verb == "STARTTLS":
                    tls = tls or code == "220"
                elif verb == "AUTH":
                    if len(notes) > checked:
                        tls, auth_ok = _standing(notes, checked, tls, auth_ok)
                        checked = len(notes)
                    auth_ok = (auth_ok if auth_ok.__class__ is str else True) if ok else False
            elif text != fmt.SECRET:  # a command
                verb = text[:4].upper()
                arg = None
                if verb == "MAIL":
                    now = _time(x, off1, base)
                    if txn is not None and txn[T_STATUS] == OPEN:
                        _end_txn(txn, None, now, direction)
                    txn = arg = [OPEN, None, _path(text), None, now, None, [], None, None,
                                 False, False, False, None]
                    txns.append(txn)
                    if direction is IN:
                        checked, tls, auth_ok = _mark_standing(txn, notes, checked, tls,
                                                               auth_ok)
                elif verb == "RCPT":
                    if txn is None or txn[T_STATUS] != OPEN:
                        txn = [OPEN, None, None, None, None, None, [], None, None, False,
                               False, False, None]
                        txns.append(txn)  # the log began after MAIL FROM
                    arg = _rcpt(txn, _path(text) or text[8:].strip())
                elif verb == "RSET":
                    if txn is not None and txn[T_STATUS] == OPEN:
                        _end_txn(txn, "reset by the client (RSET)" if direction is IN else
                                 "RSET", _time(x, off1, base), direction)
                    txn = None
                elif verb == "BDAT":
                    raise _Unusual
                elif verb == "STAR" and text.upper().startswith("STARTTLS"):
                    verb = "STARTTLS"
                elif verb == "AUTH" and auth_ok is False:
                    if len(notes) > checked:
                        tls, auth_ok = _standing(notes, checked, tls, auth_ok)
                        checked = len(notes)
                    if auth_ok is False:
                        auth_ok = None
                pending.append((verb, arg))
            continue
        c = head[:1]
        if c == "*":
            if head == fmt.SUMMARY and summary_at(x, b4) is not None:
                raise _Unusual  # a *** line before the direction is known: Session decides
        elif c == "D":
            if x[boff:] == _DISCONNECTED:
                continue
        elif c == "C":
            body = x[boff:-1]
            if body == fmt.CONNECTED or body.startswith("Connected,"):
                if direction is None and fmt.local_ip_of(body):
                    direction = IN  # only served sessions log our local address
                    skip = ">"
                    actions = _ACTIONS[IN]
                continue
        elif c == "S" and x[boff:] == _START_PROCESSING:
            continue
        body = x[boff:-1]
        if not body:
            continue
        # Session.text: of free text, only what the report can need.
        if (c == "D" and body.startswith("DNS query MX ")) or \
                (c == "C" and body.startswith("Connecting to ")):
            parsed, error = _lookup(body)
            if parsed:
                if error:
                    if c == "D":
                        mx_error = error
                    else:
                        attempt_error = error
                if direction is None:
                    direction, skip, actions = OUT, "<", _ACTIONS[OUT]
                continue
        notes.append(body)
    if last is None:
        raise _Unusual
    if txn is not None and txn[T_STATUS] == OPEN:
        if txn[T_SUMM] or _all_refused(txn):
            txn[T_STATUS] = _settle(txn, direction)
        elif disconnected:
            txn[T_STATUS] = "aborted"
            txn[T_REASON] = txn[T_REASON] or "the session ended before the end of data"
        else:
            txn[T_STATUS] = "incomplete"
        if txn[T_END] is None:
            txn[T_END] = _time(last, off1, base)
    return direction, reject, txns, notes, attempt_error or mx_error or reject


# -- whole sessions of the usual shapes ---------------------------------------------------------
# Most sessions of a log have one of a few shapes (mailferry writes them): a delivery that
# connects, says EHLO, sends one message and quits; a served session that receives one. For
# those, one regular expression over the session's joined text checks the shape and picks out
# what the interpretation needs, in C, instead of a Python step per line; the code after it
# does, for that shape, exactly what _interpret would (tests/unit/test_tracker_tally.py checks
# both on every session of generated logs). Any other shape — pipelining, AUTH, several
# transactions, a line out of place — is left to _interpret.
_P = r".{32}"  # a line's key, stamp and the space after it: (peer, SID, stamp) are known
_T = r".{22}( .{8} )"  # the same, keeping the stamp (a _STAMPS key) of a line that is timed
# A reply's text: not a continuation ("250-…" is skipped), not a "N bytes (…)" line.
_TEXT = r"(?!.{3}-).*(?<!B/s\))"
_REPLY = rf"{_TEXT}\n"
# Free text that Session.text keeps as a note, whatever the direction: not a protocol line,
# not Connected/Connecting/Disconnected/Start, not an MX lookup (those are parsed), not empty.
_NOTE = r"(?![<>*]|Connect|Disconnected\n|Start of mail processing\n|DNS query MX ).+\n"
_SUMMARY = rf"\*\*\* {fmt.SUMMARY_AT.pattern[:-1]}\n"  # the first *** line, read with the shape
# MAIL FROM / RCPT TO with session._path's address: from the first "<" to the next ">" (without
# a ">" the shape declines: _path would take the rest of the line). "to" keeps what follows the
# verb, for RCPT TO:<> (then _path's empty answer gives way to the text after "RCPT TO:").
_MAIL = r"[Mm][Aa][Ii][Ll][^<\n]*<(?P<from>[^>\n]*)>.*"
_RCPT = r"[Rr][Cc][Pp][Tt](?P<to>[^<\n]*<(?P<rcpt1>[^>\n]*)>.*)"


def _shape(pattern: str) -> re.Pattern[str]:
    """Compile a shape with possessive line tails: "." never matches the newline, so a tail
    that runs to it is never given back, and saying so spares SRE its backtracking records
    (~7 % of the match)."""
    for tail, whole in ((".*\\n", ".*+\\n"), (".*)\\n", ".*+)\\n"), (".*(?<!", ".*+(?<!"),
                        (".+\\n", ".++\\n")):
        pattern = pattern.replace(tail, whole)
    return re.compile(pattern)


_DELIVERY = _shape(
    rf"(?P<pre>(?:{_P}{_NOTE})*)"  # e.g. "Delivering delivery status notification …"
    rf"{_P}(?P<dns>DNS query MX .*)\n"
    rf"(?P<attempts>(?:{_P}Connecting to .*\n)+)"  # parsed one by one
    rf"{_P}Connected\n"
    rf"{_P}<<< 220 .*(?<!B/s\))\n"  # the greeting
    rf"{_P}>>> (?:[Ee][Hh]|[Hh][Ee])[Ll][Oo].*\n"
    rf"(?:{_P}<<< .{{3}}-.*\n)*"
    rf"{_P}<<< (?P<ehlo>{_TEXT})\n"
    rf"{_T.replace('(', '(?P<mail_at>', 1)}>>> {_MAIL}\n"
    rf"{_P}<<< (?=2){_REPLY}"  # MAIL FROM accepted
    rf"{_P}>>> {_RCPT}\n{_P}<<< (?P<reply1>{_TEXT})\n"  # the first RCPT, then the others
    rf"(?P<rcpts>(?:{_P}>>> [Rr][Cc][Pp][Tt].*\n{_P}<<< {_REPLY})*)"
    rf"(?:{_P}>>> DATA\n{_P}<<< 354(?!-).*(?<!B/s\))\n"
    rf"{_P}>>> {fmt.BYTES_AT.pattern[:-1]}\n"  # "N bytes (…)"
    rf"{_T.replace('(', '(?P<data_at>', 1)}<<< (?P<data>{_TEXT})\n)?"
    rf"{_T.replace('(', '(?P<summary_at>', 1)}{_SUMMARY}"
    rf"(?P<summaries>(?:{_P}\*\*\* .*\n)*)"  # more *** lines
    rf"(?P<post>(?:{_P}{_NOTE})*)"  # next retry, bounce …
    rf"{_P}>>> QUIT\n"
    rf"{_P}<<< {_REPLY}"
    rf"{_P}Disconnected\n")
_DELIVERY_FIELDS = tuple(_DELIVERY.groupindex[n] for n in (
    "pre", "dns", "attempts", "ehlo", "mail_at", "from", "to", "rcpt1", "reply1", "rcpts", "n",
    "data_at", "data", "summary_at", "sender", "rcpt", "size", "status", "msgid", "summaries",
    "post"))

_SERVED = _shape(
    rf"{_P}Connected, local IP=(?=.*\S).*\n"  # (local_ip_of: something after the "=")
    rf"{_P}>>> 220 .*(?<!B/s\))\n"  # the greeting
    rf"{_P}<<< (?:[Ee][Hh]|[Hh][Ee])[Ll][Oo].*\n"
    rf"(?:{_P}>>> .{{3}}-.*\n)*"
    rf"{_P}>>> {_REPLY}"
    rf"(?P<notes1>(?:{_P}{_NOTE})*)"
    rf"{_T.replace('(', '(?P<mail_at>', 1)}<<< {_MAIL}\n"
    rf"(?P<notes2>(?:{_P}{_NOTE})*)"
    rf"{_T.replace('(', '(?P<reply_at>', 1)}>>> (?P<reply>{_TEXT})\n"
    rf"(?:{_P}<<< {_RCPT}\n{_P}>>> (?P<reply1>{_TEXT})\n"  # the first RCPT, then the others
    rf"(?P<rcpts>(?:{_P}<<< [Rr][Cc][Pp][Tt].*\n{_P}>>> {_REPLY})*))?"
    rf"(?:{_P}<<< DATA\n{_P}>>> 354(?!-).*(?<!B/s\))\n"
    rf"{_P}<<< {fmt.BYTES_AT.pattern[:-1]}\n"  # "N bytes (…)"
    rf"{_P}Start of mail processing\n"
    rf"(?P<summaries>(?:{_P}\*\*\* .*\n)+)"  # *** lines, read one by one
    rf"{_T.replace('(', '(?P<data_at>', 1)}>>> (?P<data>{_TEXT})\n)?"
    rf"{_P}<<< QUIT\n"
    rf"(?:{_P}>>> {_REPLY})?"
    rf"{_T.replace('(', '(?P<end_at>', 1)}Disconnected\n")
_SERVED_FIELDS = tuple(_SERVED.groupindex[n] for n in (
    "notes1", "mail_at", "from", "notes2", "reply_at", "reply", "to", "rcpt1", "reply1",
    "rcpts", "n", "summaries", "data_at", "data", "end_at"))


def _clock_of(key: str) -> int:
    """The seconds of a stamp key (" HH:MM:SS ") read with a shape; -1 for another stamp."""
    t = _STAMPS.get(key)
    return _stamp(key) if t is None else t


def _delivery(buf: list, base: int) -> tuple | None:
    """_interpret of a delivery session of the usual shape (_DELIVERY), or None."""
    m = _DELIVERY.fullmatch("".join(buf))
    if m is None:
        return None
    (pre, dns, attempts, ehlo, mail_at, sender, to, address, reply, rcpts, nbytes, data_at, data,
     summary_at, sender1, rcpt, size, status, msgid, summaries,
     post) = m.group(*_DELIVERY_FIELDS)
    parsed, mx_error = _LOOKUPS.get(dns) or _lookup(dns)
    if not parsed:
        return None
    attempt_error = None
    for line in attempts.split("\n")[:-1]:
        parsed, error = _lookup(line[32:])
        if not parsed:
            return None
        attempt_error = error or attempt_error
    stamps = _STAMPS
    t = stamps.get(mail_at)
    if t is None:
        t = _stamp(mail_at)
    if t < 0:
        return None
    address = address or ("RCPT" + to)[8:].strip()
    ok = reply[:1] == "2"
    rows = [[address, address.lower(), reply, ok, None,
             "accepted" if ok else ("deferred" if reply[:1] == "4" else "refused")]]
    txn = [OPEN, None, sender, None, base + t, None, rows, None, None, False, False, False,
           None]
    txns = [txn]
    if rcpts:
        lines = rcpts.split("\n")
        for i in range(0, len(lines) - 1, 2):
            text = lines[i][36:]
            reply = lines[i + 1][36:]
            r = _rcpt(txn, _path(text) or text[8:].strip())
            ok = reply[:1] == "2"
            r[R_REPLY] = reply
            r[R_ACC] = ok
            r[R_STATUS] = "accepted" if ok else ("deferred" if reply[:1] == "4" else "refused")
    if nbytes is not None:
        t = stamps.get(data_at)
        if t is None:
            t = _stamp(data_at)
        if t < 0:
            return None
        txn[T_SIZE] = nbytes
        txn[T_REPLY] = data
        txn[T_END] = base + t
    txn = _summaries(txns, txn, (sender1, rcpt, size, status, msgid), summary_at, summaries,
                     base, OUT)
    if txn is None:
        return None
    txn[T_STATUS] = "done"  # Session.close: it has *** lines (_settle, outgoing)
    notes = _notes(pre + post, txns) if pre or post else []
    return OUT, ehlo if ehlo[:1] != "2" else None, txns, notes, \
        attempt_error or mx_error or (ehlo if ehlo[:1] != "2" else None)


def _served(buf: list, base: int) -> tuple | None:
    """_interpret of a served session of the usual shape (_SERVED), or None."""
    m = _SERVED.fullmatch("".join(buf))
    if m is None:
        return None
    (notes1, mail_at, sender, notes2, reply_at, reply, to, address, reply1, rcpts, nbytes,
     summaries, data_at, data, end_at) = m.group(*_SERVED_FIELDS)
    stamps = _STAMPS
    t = stamps.get(mail_at)
    if t is None:
        t = _stamp(mail_at)
    if t < 0:
        return None
    txn = [OPEN, None, sender, None, base + t, None, [], None, None, False, False, False, None]
    txns = [txn]
    if notes1:  # TLS or a login before MAIL FROM (a STARTTLS or AUTH exchange is not this shape)
        low = notes1.lower()
        if "tls" in low or "authenticated" in low:
            tls, auth_ok = _standing([line[32:] for line in notes1.split("\n")[:-1]], 0, False,
                                     None)
            txn[T_TLS] = tls
            txn[T_AUTH] = auth_ok if auth_ok.__class__ is str else None
    if reply[:1] != "2":
        t = stamps.get(reply_at)
        if t is None:
            t = _stamp(reply_at)
        if t < 0:
            return None
        txn[T_STATUS] = "rejected"
        txn[T_REASON] = reply
        txn[T_END] = base + t
    if to is not None:
        if txn[T_STATUS] != OPEN:
            txn = [OPEN, None, None, None, None, None, [], None, None, False, False, False,
                   None]
            txns.append(txn)  # (RCPT after a refused MAIL FROM)
        address = address or ("RCPT" + to)[8:].strip()
        if reply1[:1] == "2":
            txn[T_RCPTS].append([address, address.lower(), reply1, True,
                                 "relay" if "will forward" in reply1 else "local", "accepted"])
        else:
            txn[T_RCPTS].append([address, address.lower(), reply1, False, None, "refused"])
        if rcpts:
            lines = rcpts.split("\n")
            for i in range(0, len(lines) - 1, 2):
                if txn[T_STATUS] != OPEN:
                    txn = [OPEN, None, None, None, None, None, [], None, None, False, False,
                           False, None]
                    txns.append(txn)
                text = lines[i][36:]
                reply = lines[i + 1][36:]
                r = _rcpt(txn, _path(text) or text[8:].strip())
                ok = reply[:1] == "2"
                r[R_REPLY] = reply
                r[R_ACC] = ok
                if ok:
                    r[R_STATUS] = "accepted"
                    r[R_ROUTE] = "relay" if "will forward" in reply else "local"
                else:
                    r[R_STATUS] = "refused"
    if nbytes is not None:
        if txn[T_SIZE] is None:
            txn[T_SIZE] = nbytes
        line, _, more = summaries.partition("\n")
        f = fmt.SUMMARY_AT.match(line, 36)
        if f is None:
            return None
        txn = _summaries(txns, txn, f.group(1, 2, 4, 6, 7), line[22:32], more, base, IN)
        t = stamps.get(data_at)
        if t is None:
            t = _stamp(data_at)
        if txn is None or t < 0:
            return None
        _data_done(txn, data, base + t, IN)
    if txn[T_STATUS] == OPEN:  # Session.close, after its Disconnected
        if txn[T_SUMM] or _all_refused(txn):
            txn[T_STATUS] = _settle(txn, IN)
        else:
            txn[T_STATUS] = "aborted"
            txn[T_REASON] = txn[T_REASON] or "the session ended before the end of data"
        if txn[T_END] is None:
            t = stamps.get(end_at)
            if t is None:
                t = _stamp(end_at)
            if t < 0:
                return None
            txn[T_END] = base + t
    return IN, None, txns, _notes(notes1 + notes2, txns) if notes1 or notes2 else [], None


def _summaries(txns: list, txn: list, fields: tuple, at: str, more: str, base: int,
               direction: str) -> list | None:
    """The *** lines of a session of a usual shape (the first one read with the shape, the
    others in ``more``), as _interpret reads them; returns the transaction they leave current,
    or None when one is not a summary (then it is free text: _interpret)."""
    while True:
        t = _clock_of(at)
        if t < 0:
            return None
        now = base + t
        sender, rcpt, size, status, msgid = fields
        if txn[T_MSGID] is not None and msgid and txn[T_MSGID] != msgid:
            txn = [OPEN, None, sender, None, now if direction is OUT else None, None, [], None,
                   None, False, False, False, None]
            txns.append(txn)
        if txn[T_SENDER] is None:
            txn[T_SENDER] = sender
        txn[T_SUMM] = True
        if status == "OK":
            txn[T_OK] = True
        if msgid and txn[T_MSGID] is None:
            txn[T_MSGID] = msgid
        txn[T_SIZE] = size
        _rcpt(txn, rcpt)[R_STATUS] = status if direction is OUT else \
            _SERVED_SUMMARY.get(status, "rejected")
        txn[T_END] = now
        if not more:
            return txn
        line, _, more = more.partition("\n")
        f = fmt.SUMMARY_AT.match(line, 36)
        if f is None:
            return None
        fields = f.group(1, 2, 4, 6, 7)
        at = line[22:32]


def _notes(block: str, txns: list[list]) -> list[str]:
    """The free text of a session of a usual shape, when it can matter: a bounce link in it,
    or a message from <> that may be a bounce (Tally._link_bounce). Else none: nothing else
    reads notes."""
    if "ounce" not in block and "DSN" not in block:
        for t in txns:
            if t[T_SENDER] == "":
                break
        else:
            return []
    return [line[32:] for line in block.split("\n")[:-1]]


def _time(x: str, off1: int, base: int) -> int:
    """The time of a buffered line (its stamp at off1 + 1); see _clock."""
    key = x[off1:off1 + 10]
    t = _STAMPS.get(key)
    if t is None or t < 0:
        t = _clock(key)
    return base + t


def _clock(key: str) -> int:
    """The seconds of a stamp not (or no longer) in _STAMPS; _Unusual for one that is not a
    plain time of day (Session keeps it as written)."""
    t = _stamp(key)
    if t < 0:
        raise _Unusual
    return t


def _rcpt(txn: list, address: str) -> list:
    key = address.lower()
    rcpts = txn[T_RCPTS]
    for r in rcpts:
        if r[R_KEY] == key:
            return r
    r = [address, key, None, None, None, "pending"]
    rcpts.append(r)
    return r


def _data_done(txn: list, text: str, now: int, direction: str | None) -> None:
    txn[T_REPLY] = text
    txn[T_END] = now
    if direction is OUT:
        return  # the *** lines say delivered/deferred/failed per recipient
    i = text.find("Message id ")
    if i >= 0 and txn[T_MSGID] is None:
        txn[T_MSGID] = text[i + 11:].split(" ", 1)[0] or None
    if text[:1] == "2":
        txn[T_STATUS] = "accepted"
    else:
        txn[T_STATUS] = "rejected"
        txn[T_REASON] = text
        for r in txn[T_RCPTS]:
            if r[R_STATUS] == "accepted":
                r[R_STATUS] = "tempfailed" if text[:1] == "4" else "rejected"


def _end_txn(txn: list, reason: str | None, now: int, direction: str | None) -> None:
    """Session._end_txn of an open transaction (the caller checked that it is open)."""
    if txn[T_SUMM] or _all_refused(txn):
        txn[T_STATUS] = _settle(txn, direction)
    else:
        txn[T_STATUS] = "aborted"
        txn[T_REASON] = reason or "a new transaction began before the end of data"
    if txn[T_END] is None:
        txn[T_END] = now


def _all_refused(txn: list) -> bool:
    rcpts = txn[T_RCPTS]
    return bool(rcpts) and all(r[R_ACC] is False for r in rcpts)


def _settle(txn: list, direction: str | None) -> str:
    if direction is OUT:
        return "done"
    if txn[T_OK]:
        return "accepted"
    txn[T_REASON] = txn[T_REASON] or next((r[R_REPLY] for r in txn[T_RCPTS] if r[R_REPLY]), None)
    return "rejected"


def _standing(notes: list[str], start: int, tls: bool,
              auth_ok: bool | str | None) -> tuple[bool, bool | str | None]:
    """Session.text's reading of TLS and logins (``TLS established: …``, ``Authenticated as
    USER``) over ``notes[start:]``: the session's (tls, auth_ok) after them."""
    for i in range(start, len(notes)):
        text = notes[i]
        low = text.lower()
        if "tls" not in low and "authenticated" not in low:
            continue  # (both tests below need one of these words)
        if fmt.tls_ok(text):
            tls = True
        if "authenticated" in low and auth_ok is not False:
            user = fmt.parse_auth_user(text)
            if user and "not authenticated" not in low:
                auth_ok = user
    return tls, auth_ok


def _mark_standing(txn: list, notes: list[str], checked: int, tls: bool,
                   auth_ok: bool | str | None) -> tuple[int, bool, bool | str | None]:
    """At MAIL FROM in a served session: read the notes not read yet, then mark the transaction
    with the session's TLS and login as they stand. Returns (checked, tls, auth_ok)."""
    if len(notes) > checked:
        tls, auth_ok = _standing(notes, checked, tls, auth_ok)
        checked = len(notes)
    if tls:
        txn[T_TLS] = True
    if auth_ok.__class__ is str:
        txn[T_AUTH] = auth_ok
    return checked, tls, auth_ok


def _rebuild(s: list, buf: list | tuple, disconnected: bool) -> tuple:
    """The careful way for a session _interpret gave up on: session.Session, converted. Its
    times stay Whens (stamps of any shape); _seconds_of and Tally._hour_of read both."""
    ses = Session(s[S_PEER], s[S_SID], s[S_START], s[S_SOURCE], s[S_LINENO], s[S_OFF])
    ses.connected = s[S_CONN]
    ses.first = s[S_FIRST]
    ses.replay(buf)  # type: ignore[arg-type]
    ses.close(disconnected)
    txns = [[t.status, t.msgid, t.sender, t.size, t.start, t.end,
             [[r.address, r.address.lower(), r.reply, r.accepted, r.route, r.status]
              for r in t.rcpts],
             t.reason, t.reply, bool(t.summaries), any(x.status == "OK" for x in t.summaries),
             t.tls, t.auth_user]
            for t in ses.txns]
    fallback = next((e for *_, e in reversed(ses.attempts) if e), None) or \
        next((e for *_, e in reversed(ses.mx) if e), None) or ses.reject
    return ses.direction, ses.reject, txns, [text for _, text in ses.notes], fallback


def _apply_delivery(fates: dict[str, list], seen: tuple, txn: list) -> None:
    """records.apply_delivery, for what the report reads of a fate."""
    reply = txn[T_REPLY]
    end = txn[T_END]
    for r in txn[T_RCPTS]:
        st = _FATE.get(r[R_STATUS])
        if st is None:
            continue
        f = fates.get(r[R_KEY])
        if f is None:
            f = fates[r[R_KEY]] = [st, 0, 0, None, None]
        f[F_ATTEMPTS] += 1
        if st == "deferred":
            f[F_DEFERRALS] += 1
        f[F_STATUS] = st
        f[F_WHEN] = end
        f[F_REPLY] = r[R_REPLY] if r[R_ACC] is False or not reply else reply
        if (st == "deferred" or st == "failed") and not r[R_REPLY] and not reply:
            f[F_REPLY] = seen[V_FALLBACK]


# -- the command ---------------------------------------------------------------------------------
def run(files: list[reader.LogFile], *, strict: bool = False, date_override: int | None = None,
        progress: reader.Progress | None = None) -> tuple[report_mod.Report, dict]:
    """Read ``files`` into a Report; returns it and the reading statistics (cli.run's dict,
    ``damaged_files`` included)."""
    rep = report_mod.Report()
    tally = Tally(rep, strict=strict)
    damaged: list[str] = []
    # Millions of short-lived lists and tuples, none in a cycle: with the default threshold
    # (700 allocations) the collector would walk the young ones thousands of times (~8 % of
    # the run). Collections still happen, just less often.
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    try:
        for source, batches in reader.sources(files, date_override=date_override,
                                              progress=progress, on_error=damaged.append,
                                              batched=True):
            tally.feed(batches, source)
        tally.finish()
    finally:
        gc.set_threshold(*threshold)
        if progress is not None:
            progress.close()
    stats = tally.stats.as_dict()
    stats["damaged_files"] = damaged
    return rep, stats


__all__ = ["Tally", "run"]
