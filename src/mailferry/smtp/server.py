"""The server side of an SMTP session as a state machine, sans-I/O.

Bytes go in with :meth:`ServerProtocol.feed`; events come out of :meth:`next_event`. Following
OpenSMTPD, the machine *checks* every command (syntax, order, limits it owns) and answers the ones
that need nothing else; MAIL, RCPT and DATA need a decision from policy, so they come out as events
and the session *proceeds* by calling :meth:`accept_mail`, :meth:`accept_rcpt` or
:meth:`begin_data`. A refused command changes nothing: the caller just sends the refusal.

STARTTLS (RFC 3207) and AUTH (RFC 4954) are checked here too: STARTTLS comes out as an event
(the session does the handshake, then calls :meth:`tls_started`, which forgets everything); AUTH
runs its SASL exchange (smtp.auth) here and comes out as :class:`AuthRequest` with the
credentials, the session checks them and calls :meth:`auth_succeeded`. The lines of an AUTH
exchange come out redacted: the command without its initial response, and the client's
continuation lines marked ``hidden`` so the session logs them as ``****``.

No sockets, files, clocks, DNS or policy here. The session does the I/O and the logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailferry import reply
from mailferry.reply import Reply
from mailferry.smtp.auth import MECHANISMS, Challenge, Credentials, Exchange, Step, parse_auth_args
from mailferry.smtp.command import (
    MailArgs,
    RcptArgs,
    check_line_chars,
    parse_command,
    parse_helo,
    parse_mail,
    parse_rcpt,
)
from mailferry.smtp.data import DataReader, Sink


@dataclass(frozen=True, slots=True)
class Answered:
    """The machine answered by itself. ``line`` is the command as received (None when no line was
    complete, e.g. an over-long line); ``close`` asks the session to close after sending."""

    line: str | None
    reply: Reply
    close: bool = False
    hidden: bool = False  # the line was a SASL response: log it as "****", never as sent


@dataclass(frozen=True, slots=True)
class StartTlsRequest:
    """STARTTLS was accepted: send 220, discard what is buffered, then do the handshake."""

    line: str


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """An AUTH exchange ended with credentials to check. ``line`` is the redacted command (the
    mechanism alone) or None when the credentials came in a continuation line (log "****")."""

    line: str | None
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class MailRequest:
    line: str
    args: MailArgs


@dataclass(frozen=True, slots=True)
class RcptRequest:
    line: str
    args: RcptArgs


@dataclass(frozen=True, slots=True)
class DataRequest:
    line: str


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """End of data: the message went to the sink given to begin_data. ``error`` is the refusal
    when the data itself broke a rule (size, bare newline, long line)."""

    mail: MailArgs
    rcpts: tuple[RcptArgs, ...]
    size: int
    raw: int
    error: Reply | None


Event = (Answered | MailRequest | RcptRequest | DataRequest | MessageEnd | StartTlsRequest
         | AuthRequest)


@dataclass
class Limits:
    line_length: int = 2048
    message_size: int = 26_214_400
    recipients: int = 100
    accept_long_lines: bool = False


@dataclass
class ServerProtocol:
    hostname: str
    client_ip: str
    limits: Limits = field(default_factory=Limits)
    helo_name: str | None = None
    esmtp: bool = False
    mail: MailArgs | None = None
    rcpts: list[RcptArgs] = field(default_factory=list)
    _buf: bytearray = field(default_factory=bytearray)
    _data: DataReader | None = None
    _skipping: bool = False  # discarding the rest of an over-long line
    # TLS and AUTH, set by the session from its listener.
    starttls_available: bool = False  # STARTTLS may be offered (a certificate, not smtps)
    tls_active: bool = False
    auth_enabled: bool = False  # AUTH is offered on this listener once TLS is active
    auth_required: bool = False  # MAIL needs AUTH first (submission, smtps)
    auth_user: str | None = None
    _sasl: Exchange | None = None  # an AUTH exchange in progress: lines are SASL responses

    # --- input ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def in_data(self) -> bool:
        return self._data is not None

    @property
    def pending_input(self) -> bool:
        return bool(self._buf)

    def discard_input(self) -> None:
        """Forget buffered input (after STARTTLS: what was pipelined in the clear must not run)."""
        self._buf.clear()

    def next_event(self) -> Event | None:
        """The next event from buffered input, or None when more bytes are needed."""
        if self._data is not None:
            return self._next_data_event()
        return self._next_command_event()

    def _next_data_event(self) -> MessageEnd | None:
        assert self._data is not None and self.mail is not None
        if not self._buf:
            return None
        chunk = bytes(self._buf)
        self._buf.clear()
        rest = self._data.feed(chunk)
        if rest is None:
            return None
        self._buf += rest
        reader, self._data = self._data, None
        event = MessageEnd(self.mail, tuple(self.rcpts), reader.size, reader.raw, reader.error)
        self.reset()
        return event

    def _next_command_event(self) -> Event | None:
        buf = self._buf
        end = buf.find(b"\r\n")
        limit = self.limits.line_length
        if end < 0:
            # limit + 1: a line of exactly `limit` octets may have its CR here and its LF later.
            if len(buf) > limit + 1:
                # RFC 5321 §4.5.3.1.4: 500 for a line that is too long. Drop what we have and
                # keep dropping until the end of that line, so its tail is not read as a command.
                # The last octet stays: it may be the CR of the CRLF that ends the long line.
                del buf[:-1]
                self._sasl = None  # an over-long SASL response ends the exchange
                was_skipping, self._skipping = self._skipping, True
                return None if was_skipping else Answered(None, reply.LINE_TOO_LONG)
            return None
        raw = bytes(buf[:end])
        del buf[: end + 2]
        if self._skipping:
            self._skipping = False
            return self._next_command_event()
        if end > limit:
            self._sasl = None
            return Answered(None, reply.LINE_TOO_LONG)
        if self._sasl is not None:
            # Before any other check: whatever the client sent here may be a secret.
            return self._sasl_line(raw)
        bad = check_line_chars(raw)
        line = raw.decode("ascii", "backslashreplace")
        if bad is not None:
            return Answered(line, bad)
        if "\r" in line or "\n" in line:
            # A bare CR or LF inside a command: never treat it as a line end (SMTP smuggling).
            return Answered(line.replace("\r", "\\r").replace("\n", "\\n"), reply.BARE_NEWLINE)
        return self._dispatch(line)

    # --- commands -------------------------------------------------------------------------
    def _dispatch(self, line: str) -> Event:
        cmd = parse_command(line)
        if isinstance(cmd, Reply):
            return Answered(line, cmd)
        verb = cmd.verb
        if verb == "EHLO" or verb == "HELO":
            return Answered(line, self._helo(cmd.arg, esmtp=verb == "EHLO"))
        if verb == "MAIL":
            return self._check_mail(line, cmd.arg)
        if verb == "RCPT":
            return self._check_rcpt(line, cmd.arg)
        if verb == "DATA":
            if self.mail is None:
                return Answered(line, reply.NEED_MAIL)
            if not self.rcpts:
                return Answered(line, reply.NEED_RCPT)
            return DataRequest(line)
        if verb == "RSET":
            self.reset()
            return Answered(line, reply.RESET)
        if verb == "NOOP":
            return Answered(line, reply.NOOP)
        if verb == "QUIT":
            return Answered(line, reply.closing(self.hostname), close=True)
        if verb == "VRFY":
            # RFC 5321 §3.5.3: 252 — never confirm or deny that a user exists.
            return Answered(line, reply.VRFY)
        if verb == "HELP":
            return Answered(line, reply.HELP)
        if verb == "STARTTLS":
            return self._starttls(line)
        if verb == "AUTH":
            return self._auth(cmd.arg)
        return Answered(line, reply.NOT_IMPLEMENTED)  # EXPN: never reveal list members

    def extensions(self) -> list[str]:
        ext = [
            "PIPELINING",
            f"SIZE {self.limits.message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "HELP",
        ]
        if self.starttls_available and not self.tls_active:
            ext.append("STARTTLS")  # RFC 3207 §4.2: never again once TLS is active
        if self.auth_enabled and self.tls_active:
            ext.append("AUTH " + " ".join(MECHANISMS))  # never offered in the clear
        return ext

    def _helo(self, arg: str, *, esmtp: bool) -> Reply:
        name = parse_helo(arg)
        if isinstance(name, Reply):
            return name
        # RFC 5321 §4.1.4: EHLO/HELO also resets any transaction in progress.
        self.reset()
        self.helo_name = name
        self.esmtp = esmtp
        if esmtp:
            return reply.ehlo(self.hostname, name, self.client_ip, self.extensions())
        return reply.helo(self.hostname, name, self.client_ip)

    def _check_mail(self, line: str, arg: str) -> Event:
        if self.helo_name is None:
            return Answered(line, reply.NEED_HELO)
        if self.auth_required and self.auth_user is None:
            # RFC 3207 §4 / RFC 4954 §6: 530 5.7.0, naming what has to come first.
            first = reply.STARTTLS_FIRST if not self.tls_active else reply.AUTH_REQUIRED
            return Answered(line, first)
        if self.mail is not None:
            return Answered(line, reply.NESTED_MAIL)
        args = parse_mail(arg, max_size=self.limits.message_size)
        if isinstance(args, Reply):
            return Answered(line, args)
        if not self.esmtp and (args.size is not None or args.body is not None):
            return Answered(line, reply.UNKNOWN_PARAM)  # extensions were not offered via HELO
        return MailRequest(line, args)

    def _check_rcpt(self, line: str, arg: str) -> Event:
        if self.mail is None:
            return Answered(line, reply.NEED_MAIL)
        args = parse_rcpt(arg)
        if isinstance(args, Reply):
            return Answered(line, args)
        if len(self.rcpts) >= self.limits.recipients:
            # RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client sends the rest later.
            return Answered(line, reply.TOO_MANY_RECIPIENTS)
        return RcptRequest(line, args)

    def _starttls(self, line: str) -> Event:
        if self.tls_active:
            return Answered(line, reply.TLS_ALREADY_ACTIVE)
        if not self.starttls_available:
            return Answered(line, reply.NOT_IMPLEMENTED)
        return StartTlsRequest(line)

    def _auth(self, arg: str) -> Event:
        # Logged without the initial response: it holds the password (PLAIN).
        shown = "AUTH " + arg.split(" ", 1)[0] if arg else "AUTH"
        if not self.auth_enabled:
            return Answered(shown, reply.NOT_IMPLEMENTED)
        if not self.tls_active:
            return Answered(shown, reply.AUTH_NEEDS_TLS)
        if self.helo_name is None or not self.esmtp:
            return Answered(shown, reply.NEED_HELO)
        if self.auth_user is not None:
            return Answered(shown, reply.AUTH_ALREADY)
        if self.mail is not None:
            return Answered(shown, reply.AUTH_IN_TRANSACTION)
        parsed = parse_auth_args(arg)
        if isinstance(parsed, Reply):
            return Answered(shown, parsed)
        exchange = Exchange(*parsed)
        return self._sasl_result(shown, exchange, exchange.start())

    def _sasl_line(self, raw: bytes) -> Event:
        exchange = self._sasl
        assert exchange is not None
        self._sasl = None
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            return Answered(None, reply.AUTH_BAD_BASE64, hidden=True)
        return self._sasl_result(None, exchange, exchange.step(line))

    def _sasl_result(self, shown: str | None, exchange: Exchange, step: Step) -> Event:
        if isinstance(step, Challenge):
            self._sasl = exchange
            return Answered(shown, step.reply, hidden=shown is None)
        if isinstance(step, Credentials):
            return AuthRequest(shown, step)
        return Answered(shown, step, hidden=shown is None)

    # --- decisions made by the session ------------------------------------------------------
    def tls_started(self) -> None:
        """RFC 3207 §4.2: after the handshake the client starts over (EHLO again), and nothing it
        sent before it is remembered: not a HELO name, a transaction or a buffered line."""
        self._buf.clear()
        self._skipping = False
        self._sasl = None
        self.tls_active = True
        self.helo_name = None
        self.esmtp = False
        self.auth_user = None
        self.reset()

    def auth_succeeded(self, user: str) -> None:
        self.auth_user = user
    def accept_mail(self, args: MailArgs) -> None:
        self.mail = args
        self.rcpts = []

    def accept_rcpt(self, args: RcptArgs) -> None:
        self.rcpts.append(args)

    def begin_data(self, sink: Sink) -> None:
        """Switch to DATA mode; the caller sends 354. The bytes go into ``sink``."""
        self._data = DataReader(sink, self.limits.message_size,
                                accept_long_lines=self.limits.accept_long_lines)

    def reset(self) -> None:
        self.mail = None
        self.rcpts = []
