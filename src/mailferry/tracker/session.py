"""One SMTP session rebuilt from its log lines: the state machine behind ``mailferry trace``.

Where it sits: reconstruct.py splits the interleaved log into sessions (per peer and SID) and hands
each session its lines here; when the session closes, reconstruct.py joins its transactions with
the other sessions of the same message. This module only understands what happened *inside one
session*, in either direction (a session we served, or one we opened to deliver mail).

It must not: read files, know about other sessions, or import the server (inbound, delivery,
queue): the tracker runs on a copied log file on a laptop. It runs for every line of logs of
millions of lines, so the hot paths use cheap prefix checks and ``__slots__`` objects, and keep no
per-line objects unless the caller asks for the raw lines (``--explain``).
"""

from __future__ import annotations

from mailferry.txlog import format as fmt

IN = "in"  # a session we served: >>> are our replies, <<< the client's commands
OUT = "out"  # a session we opened to deliver mail: >>> are our commands, <<< the replies

When = tuple[int, str]  # (day, stamp): day is a date ordinal, or a small offset for undated logs

# Pseudo command that the final reply to DATA pairs with (after 354 and the message itself).
END_OF_DATA = "."
_SKIP = {IN: ">", OUT: "<"}  # the prefix of the replies in each direction (">>> 250-…")


class Rcpt:
    """One RCPT TO of a transaction and what became of it in this session."""

    __slots__ = ("accepted", "address", "reply", "route", "status")

    def __init__(self, address: str) -> None:
        self.address = address
        self.reply: str | None = None
        self.accepted: bool | None = None
        self.route: str | None = None  # served sessions: "local" mailbox or "relay" (will forward)
        # served: pending/refused/accepted/rejected/tempfailed; outgoing: the *** status.
        self.status = "pending"


class Txn:
    """One mail transaction (MAIL FROM … end of data) inside a session."""

    __slots__ = ("auth_user", "bdat", "data_reply", "duration", "end", "mail_reply", "msgid",
                 "queued_as", "rcpts", "reason", "reply", "sender", "size", "size_declared",
                 "start", "status", "summaries", "tls")

    def __init__(self, start: When | None, sender: str | None) -> None:
        self.start = start  # None: the log began after MAIL FROM
        self.end: When | None = None
        self.sender = sender
        self.size_declared: int | None = None
        self.size: int | None = None
        self.duration: str | None = None
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.reply: str | None = None  # the final reply to the message (after its data)
        self.rcpts: list[Rcpt] = []
        self.msgid: str | None = None
        self.queued_as: str | None = None
        self.summaries: list[fmt.Summary] = []
        self.status = "open"  # open → accepted / rejected / aborted / incomplete (or delivery ones)
        self.reason: str | None = None
        self.bdat = False
        # How the session stood at MAIL FROM: who had logged in (None: nobody, or not known),
        # and whether the line was encrypted. A session may STARTTLS between transactions.
        self.auth_user: str | None = None
        self.tls = False

    def rcpt(self, address: str) -> Rcpt:
        key = address.lower()
        for r in self.rcpts:
            if r.address.lower() == key:
                return r
        r = Rcpt(address)
        self.rcpts.append(r)
        return r


class Session:
    """The state of one session while its lines arrive, and what it found once closed."""

    __slots__ = ("_x", "attempts", "auth", "auth_ok", "closed", "connected", "direction",
                 "first", "greeting", "helo", "last", "lday", "lineno", "lines", "local_ip", "mx",
                 "notes", "off", "peer", "pending", "protocol", "reject", "retry", "sid", "source",
                 "start", "tls", "txn", "txns")

    def __init__(self, peer: str, sid: str, when: When, source: str, lineno: int,
                 off: int = 0) -> None:
        self.off = off  # where the stamp starts in this session's raw lines
        self.peer = peer
        self.sid = sid
        self.start = when
        self.lday, self.last = when
        self.source = source
        self.lineno = lineno
        self.connected = False
        self.closed = False  # saw Disconnected
        self.first: str | None = None  # what the first line was: "connected", "text", "protocol"
        self.protocol = False  # saw a >>> / <<< / *** line
        self.direction: str | None = None
        self.local_ip: str | None = None
        self.helo: str | None = None
        self.tls = False
        self.auth: str | None = None  # mechanism
        self.auth_ok: bool | str | None = None  # True / False, or the user name once known
        self.greeting: str | None = None
        self.reject: str | None = None  # the session itself was refused (421/554 greeting …)
        self.notes: list[tuple[When, str]] = []
        self.pending: list[tuple[str, object]] = []  # commands awaiting their reply (pipelining)
        self.txn: Txn | None = None
        self.txns: list[Txn] = []
        self.mx: list[tuple[str, list[tuple[str, int | None]], str | None]] = []
        self.attempts: list[tuple[str, str | None, int | None, str | None]] = []
        self.retry: str | None = None
        self.lines: list[tuple[str, int, str]] | None = None  # (file, line, text): --explain
        self._x: object = ("00:00:00", "")  # the entry being interpreted (see _now)

    # -- the lines ------------------------------------------------------------------------------
    def replay(self, entries: list) -> None:
        """Interpret the session's buffered lines, in order. An entry is a raw line whose
        ``HH:MM:SS`` stamp starts at ``self.off``, a ``(stamp, body)`` pair (other shapes), or an
        int: the day of the lines that follow.

        The hottest loop of the tracker: ``>>>`` / ``<<<`` lines are dispatched inline (no call
        but the one that acts), continuation lines of multi-line replies are skipped unread."""
        boff = self.off + 9
        reply, command = self._reply, self._command
        direction = self.direction
        skip = _SKIP.get(direction, "")  # the prefix char of replies, once the direction is known
        protocol = False
        last = None
        for x in entries:
            cls = x.__class__
            if cls is str:
                if x[boff] == skip and x[boff + 7:boff + 8] == "-":
                    continue  # "250-…" lines: the final line of the reply carries the outcome
                body = x[boff:-1] if x[-1] == "\n" else x[boff:]
            elif cls is int:
                self.lday = x
                continue
            else:
                body = x[1]
            self._x = last = x
            head = body[:4]
            if head == ">>> " or head == "<<< ":
                protocol = True
                text = body[4:]
                ours = head == ">>> "  # a line we sent
                if direction is None:
                    # A served session's first protocol line is our reply or their command.
                    direction = self.direction = IN if ours == _is_reply(text) else OUT
                    skip = _SKIP[direction]
                n = fmt.parse_bytes(text) if text[-4:] == "B/s)" else None
                if n:
                    self._data_bytes(n)
                elif ours == (direction is IN):
                    reply(text)
                elif text != fmt.SECRET:  # the hidden lines of AUTH carry nothing to read
                    command(text)
                continue
            c = head[:1]
            if c == "*":
                summ = fmt.parse_summary(body)
                if summ is not None:
                    protocol = True
                    self.summary(summ)
                    continue
            elif c == "D":
                if body == fmt.DISCONNECTED:
                    continue
            elif c == "C":
                if body == fmt.CONNECTED or body.startswith("Connected,"):
                    self.connected_line(body)
                    direction = self.direction
                    skip = _SKIP.get(direction, "")
                    continue
            elif c == "S" and body == fmt.START_PROCESSING:
                continue
            if body:
                self.text(body)
                direction = self.direction
                skip = _SKIP.get(direction, "")
        if protocol:
            self.protocol = True
        if last is not None:
            self._x = last
            self.last = self._now()[1]

    def _now(self) -> When:
        """The day and stamp of the line being interpreted."""
        x = self._x
        if x.__class__ is str:
            return self.lday, x[self.off:self.off + 8]
        return self.lday, x[0]

    # -- one line ------------------------------------------------------------------------------
    def summary(self, s: fmt.Summary) -> None:
        """``***``: the outcome of the message for one recipient."""
        txn = self.txn
        if txn is None and self.txns:
            # A transaction already ended (RSET after refused recipients …): its *** lines still
            # belong to it when they name one of its recipients.
            last = self.txns[-1]
            key = s.rcpt.lower()
            if (last.msgid is None or last.msgid == s.msgid) and any(
                    r.address.lower() == key for r in last.rcpts):
                txn = last
        if txn is None or (txn.msgid is not None and s.msgid and txn.msgid != s.msgid):
            # The log began after the transaction started (or a delivery that never got as far
            # as MAIL FROM: DNS or connection failures still end in one *** line per recipient).
            txn = self.txn = Txn(self._now() if self.direction is OUT else None, s.sender)
            self.txns.append(txn)
        if txn.sender is None:
            txn.sender = s.sender
        txn.summaries.append(s)
        if s.msgid and txn.msgid is None:
            txn.msgid = s.msgid
        txn.size = s.size
        txn.duration = s.duration
        r = txn.rcpt(s.rcpt)
        if self.direction is OUT:
            r.status = s.status
        else:
            r.status = {"OK": "accepted", "DEFERRED": "tempfailed"}.get(s.status, "rejected")
        txn.end = self._now()

    def text(self, text: str) -> None:
        """A free-text line: DNS lookups, connection attempts, TLS, policy decisions, errors."""
        c = text[:1]
        if c == "D" and text.startswith("DNS query MX "):
            mx = fmt.parse_dns_mx(text)
            if mx:
                self.mx.append(mx)
                self.direction = self.direction or OUT
                return
        elif c == "C" and text.startswith("Connecting to "):
            at = fmt.parse_connecting(text)
            if at:
                self.attempts.append(at)
                self.direction = self.direction or OUT
                return
        if fmt.tls_ok(text):
            self.tls = True
        low = text.lower()
        if "authenticated" in low and self.auth_ok is not False:
            user = fmt.parse_auth_user(text)
            if user and "not authenticated" not in low:
                self.auth_ok = user
        if "retry" in low:
            self.retry = fmt.parse_next_retry(text) or self.retry
        self.notes.append((self._now(), text))

    def connected_line(self, body: str) -> None:
        self.connected = True
        if self.first is None:
            self.first = "connected"
        ip = fmt.local_ip_of(body)
        if ip:
            self.local_ip = ip
            # Only served sessions log our local address (log-format.md).
            self.direction = self.direction or IN

    def close(self, disconnected: bool) -> None:
        """The session ended (Disconnected) or the log did (EOF, eviction): settle what is open."""
        self.closed = disconnected
        txn = self.txn
        if txn is not None and txn.status == "open":
            if txn.summaries or _all_refused(txn):
                txn.status = _settle(txn, self.direction)
            elif disconnected:
                txn.status = "aborted"
                txn.reason = txn.reason or "the session ended before the end of data"
            else:
                txn.status = "incomplete"
            txn.end = txn.end or self._now()

    def start_seen(self) -> bool:
        """Whether the log holds the session's beginning (else it began before the log did)."""
        # An outgoing session may begin with free text (DNS, connection attempts) and even end
        # without ever connecting; a served session always begins with Connected.
        return self.connected or (self.first == "text" and self.direction is OUT)

    # -- protocol -------------------------------------------------------------------------------
    def _command(self, text: str) -> None:
        verb = text[:4].upper()
        arg: object = None
        if verb == "MAIL":
            self._end_txn()
            txn = self.txn = Txn(self._now(), _path(text))
            txn.size_declared = _size_param(text)
            txn.tls = self.tls
            if isinstance(self.auth_ok, str):
                txn.auth_user = self.auth_ok
            self.txns.append(txn)
            arg = txn
        elif verb == "RCPT":
            txn = self.txn
            if txn is None or txn.status != "open":
                txn = self.txn = Txn(None, None)  # log began after MAIL FROM
                self.txns.append(txn)
            arg = txn.rcpt(_path(text) or text[8:].strip())
        elif verb in ("EHLO", "HELO", "LHLO"):
            self.helo = text[5:].strip() or None
        elif verb == "AUTH":
            self.auth = text[5:].split(" ", 1)[0].upper() or None
            if self.auth_ok is False:
                # A new attempt after a refused one: its "Authenticated as USER" line (logged
                # before the 235) names the user again.
                self.auth_ok = None
        elif verb == "STAR" and text.upper().startswith("STARTTLS"):
            verb = "STARTTLS"
        elif verb == "BDAT":
            if self.txn is not None:
                self.txn.bdat = True
            if "LAST" in text.upper():
                verb = END_OF_DATA
        elif verb == "RSET":
            self._end_txn("reset by the client (RSET)" if self.direction is IN else "RSET")
        self.pending.append((verb, arg))

    def _reply(self, text: str) -> None:
        if len(text) > 3 and text[3] == "-":
            return  # continuation line: the final line carries the outcome (and the code)
        code = text[:3]
        pending = self.pending
        if not pending:
            if self.greeting is None and self.txn is None and code in ("220", "421", "554"):
                self.greeting = text
                if code != "220":
                    self.reject = text
            elif code[:1] in ("4", "5"):
                # Unsolicited: a 421 timeout/shutdown, or the end-of-data reply of a message whose
                # DATA line is from before the log began.
                txn = self.txn
                if txn is not None and txn.status == "open" and txn.summaries:
                    self._data_done(txn, text)
                else:
                    self.reject = self.reject or text
            elif code == "250" and "Recipient ok" in text and "<" in text:
                # The reply to a RCPT TO from before the log began (IceWarp/mailferry wording).
                txn = self.txn
                if txn is None:
                    txn = self.txn = Txn(None, None)
                    self.txns.append(txn)
                r = txn.rcpt(_path(text) or "")
                r.reply, r.accepted, r.status = text, True, "accepted"
                r.route = "relay" if "will forward" in text else "local"
            elif code == "250" and self.txn is not None and self.txn.status == "open":
                self._data_done(self.txn, text)
            return
        verb, arg = pending[0]
        if code == "334" and verb == "AUTH":
            return  # the AUTH exchange goes on; its final reply is still to come
        expect = _expected_verb(code, text)
        if expect is not None and verb != expect and len(pending) > 1:
            # Lines are missing from the log (a sample, a gap): the reply names the command it
            # answers, so skip the commands whose replies were lost instead of pairing askew.
            for i, (v, _) in enumerate(pending):
                if v == expect:
                    del pending[:i]
                    verb, arg = pending[0]
                    break
        del pending[0]
        ok = code[:1] == "2"
        if verb == "RCPT":
            r: Rcpt = arg  # type: ignore[assignment]
            r.reply = text
            r.accepted = ok
            if self.direction is IN:
                r.status = "accepted" if ok else "refused"
                if ok:
                    r.route = "relay" if "will forward" in text else "local"
            else:
                r.status = "accepted" if ok else ("deferred" if code[:1] == "4" else "refused")
        elif verb == "MAIL":
            txn: Txn = arg  # type: ignore[assignment]
            txn.mail_reply = text
            if not ok:
                txn.status = "rejected"
                txn.reason = text
                txn.end = self._now()
        elif verb == "DATA":
            txn = self.txn  # type: ignore[assignment]
            if txn is None:
                return
            if code == "354":
                txn.data_reply = text
                self.pending.insert(0, (END_OF_DATA, None))
            else:
                txn.data_reply = text
                if txn.status == "open":
                    txn.status = "rejected"
                    txn.reason = text
                    txn.end = self._now()
        elif verb == END_OF_DATA:
            if self.txn is not None:
                self._data_done(self.txn, text)
        elif verb == "STARTTLS":
            self.tls = self.tls or code == "220"
        elif verb == "AUTH":
            self.auth_ok = (self.auth_ok if isinstance(self.auth_ok, str) else True) if ok \
                else False
        elif verb in ("EHLO", "HELO") and not ok and self.direction is OUT:
            self.reject = self.reject or text

    def _data_done(self, txn: Txn, text: str) -> None:
        txn.reply = text
        txn.end = self._now()
        if self.direction is OUT:
            i = text.find("queued as ")
            if i >= 0:
                txn.queued_as = (text[i + 10:].split() or [""])[0].rstrip(".,;)") or None
            return  # the *** lines say delivered/deferred/failed per recipient
        i = text.find("Message id ")
        if i >= 0 and txn.msgid is None:
            txn.msgid = text[i + 11:].split(" ", 1)[0] or None
        if text[:1] == "2":
            txn.status = "accepted"
        else:
            txn.status = "rejected"
            txn.reason = text
            for r in txn.rcpts:
                if r.status == "accepted":
                    r.status = "tempfailed" if text[:1] == "4" else "rejected"

    def _data_bytes(self, n: tuple[int, int]) -> None:
        """A ``N bytes (…)`` line, parsed: the size of the message, unless *** says it."""
        if self.txn is not None and self.txn.size is None:
            self.txn.size = n[0]

    def _end_txn(self, reason: str | None = None) -> None:
        txn = self.txn
        if txn is not None and txn.status == "open":
            if txn.summaries or _all_refused(txn):
                txn.status = _settle(txn, self.direction)
            else:
                txn.status = "aborted"
                txn.reason = reason or "a new transaction began before the end of data"
            txn.end = txn.end or self._now()
        self.txn = None


def _expected_verb(code: str, text: str) -> str | None:
    """The command a reply can only be answering, from its code or enhanced code (RFC 3463)."""
    if code == "354":
        return "DATA"
    enhanced = text[4:9]
    if enhanced == "2.1.0":
        return "MAIL"
    if enhanced == "2.1.5":
        return "RCPT"
    if enhanced == "2.6.0":
        return END_OF_DATA
    if code == "221":
        return "QUIT"
    return None


def _all_refused(txn: Txn) -> bool:
    return bool(txn.rcpts) and all(r.accepted is False for r in txn.rcpts)


def _settle(txn: Txn, direction: str | None) -> str:
    """The outcome of a transaction that ended without a final reply to its data."""
    if direction is OUT:
        return "done"
    if any(s.status == "OK" for s in txn.summaries):
        return "accepted"
    txn.reason = txn.reason or next((r.reply for r in txn.rcpts if r.reply), None)
    return "rejected"


def _is_reply(text: str) -> bool:
    code = text[:3]
    return len(code) == 3 and code.isascii() and code.isdigit() and text[3:4] in ("", " ", "-")


def _path(text: str) -> str | None:
    """The address in ``MAIL FROM:<a> …`` / ``RCPT TO:<b> …`` (``""`` for the null sender)."""
    i = text.find("<")
    if i < 0:
        _, _, rest = text.partition(":")
        rest = rest.strip()
        return rest.split(" ", 1)[0] if rest else None
    j = text.find(">", i)
    return text[i + 1:j] if j > 0 else text[i + 1:]


def _size_param(text: str) -> int | None:
    i = text.upper().find(" SIZE=")
    if i < 0:
        return None
    digits = text[i + 6:].split(" ", 1)[0]
    return int(digits) if digits.isdigit() else None
