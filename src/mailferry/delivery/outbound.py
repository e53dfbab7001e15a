"""One outgoing SMTP session: mailferry as a client, delivering one message to one destination.

Called by the remote runner with the recipients of one domain (or everything, for a smart host).
It routes (MX per RFC 5321 §5.1 via dns.mx, or the smart host), connects to each host in order
until one answers, speaks ESMTP through our own sans-I/O client helpers (smtp.client) so that
every line sent and received is in the transaction log exactly as on the wire, and returns an
outcome per recipient: delivered, deferred (4xx, or any failure before a reply) or failed (5xx).

Each call is its own transaction-log session with a new SID and our own address as the peer.
The lines written before the connection exists (DNS, connection attempts) are held until we know
which local address the connection uses, so that every line of the session carries it.

Must not: touch the queue or decide retries (the runner does); raise for anything the network does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailferry.config import Config
from mailferry.dns import mx
from mailferry.dns.resolver import Resolver, Status
from mailferry.ids import SessionIdPool
from mailferry.smtp.client import (
    ClientReply,
    ProtocolError,
    ReplyReader,
    encode_data,
    mail_command,
    parse_ehlo,
    rcpt_command,
)
from mailferry.txlog import format as fmt
from mailferry.txlog.writer import TxLog

if TYPE_CHECKING:
    from mailferry.metrics import Metrics

DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"
_STATUS_WORD = {DELIVERED: "OK", DEFERRED: "DEFERRED", FAILED: "FAILED"}


@dataclass(frozen=True)
class Outcome:
    status: str  # DELIVERED / DEFERRED / FAILED
    reply: str  # what the remote said ("550 5.1.1 ...") or what went wrong before any reply
    remote: str = ""  # "mx1.example.net [192.0.2.7]"
    enhanced: str = ""  # RFC 3463 status for the DSN


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    port: int


_IDLE = 2.0  # seconds a parked connection waits for the next message (Postfix: 2 s)
_MAX_USES = 100  # messages per connection, then a fresh one


@dataclass(eq=False)
class _Parked:
    conn: _Conn
    ext: dict[str, str]
    timer: asyncio.TimerHandle | None = None


class _HostFailed(Exception):
    """This host cannot take the message now (no connection, bad greeting, TLS failure): the
    next host is tried; if none is left, every recipient is deferred with this reason."""


class _RetryWithoutVerify(Exception):
    """The certificate did not verify: reconnect and use TLS without verification (RFC 7435)."""


class _Log:
    """Session log lines, held until the local address is known."""

    def __init__(self, txlog: TxLog, sid: str, fallback_ip: str) -> None:
        self._txlog = txlog
        self._sid = sid
        self.sid = sid
        self.key = ""  # the destination (domain or smart host) of the connection it logs
        self.parked = False  # the connection outlives this deliver() call (connection reuse)
        self._fallback = fallback_ip
        self._held: list[str] = []
        self._prefix: str | None = None

    def bind(self, local_ip: str) -> None:
        if self._prefix is None:
            self._prefix = fmt.prefix(local_ip, self._sid)
            for body in self._held:
                self._txlog.append(self._prefix, body)
            self._held.clear()

    def __call__(self, body: str) -> None:
        if self._prefix is None:
            self._held.append(body)
        else:
            self._txlog.append(self._prefix, body)

    def flush_soon(self) -> None:
        if self._prefix is not None:
            self._txlog.flush_soon()

    def close(self) -> None:
        self.bind(self._fallback)
        self(fmt.DISCONNECTED)
        self._txlog.flush()


class Outbound:
    def __init__(self, config: Config, txlog: TxLog, sids: SessionIdPool,
                 resolver: Resolver, metrics: Metrics | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._txlog = txlog
        self._sids = sids
        self._resolver = resolver
        delivery = config.delivery
        self._fallback_ip = delivery.source_address or (
            config.listeners[0].host if config.listeners else "0.0.0.0")
        # The system's CAs plus the configured ones (docs/config.md: "extra" CAs). Passing
        # cafile to create_default_context would load that file *instead of* the system store.
        self._verify_ctx = ssl.create_default_context()
        if delivery.tls_ca_file:
            self._verify_ctx.load_verify_locations(cafile=str(delivery.tls_ca_file))
        self._verify_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._plain_ctx = ssl.create_default_context()
        self._plain_ctx.check_hostname = False
        self._plain_ctx.verify_mode = ssl.CERT_NONE
        self._plain_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._idle: dict[str, list[_Parked]] = {}
        self._closing = False

    # --- routing ----------------------------------------------------------------------------------
    async def deliver(self, domain: str, msgid: str, sender: str, message: bytes,
                      rcpts: Sequence[str], *, smart_host: bool = False) -> list[Outcome]:
        """Deliver to ``rcpts`` (all in ``domain``); one Outcome per recipient, in order."""
        key = "[smart host]" if smart_host else domain
        reused = await self._reuse(key, msgid, sender, message, rcpts)
        if reused is not None:
            return reused
        sid = self._sids.acquire()
        log = _Log(self._txlog, sid, self._fallback_ip)
        log.key = key
        started = time.monotonic()
        try:
            # Addresses that cannot go into a command (not ASCII, control characters: possible
            # through an alias target) fail here, for good, without a connection; the others
            # are delivered as usual.
            invalid = _invalid_addresses(sender, rcpts)
            refused = [(r, bad) for r, bad in zip(rcpts, invalid, strict=True) if bad is not None]
            for rcpt, bad in refused:
                log(f"Not delivered to <{fmt.sanitize(rcpt)}>: {bad.reply}")
            valid = [r for r, bad in zip(rcpts, invalid, strict=True) if bad is None]
            outcomes: list[Outcome] = []
            if valid:
                outcomes = await self._deliver_valid(domain, log, msgid, sender, message, valid,
                                                     started, smart_host, len(rcpts))
            _summarize(log, msgid, sender, [r for r, _ in refused], len(message), started,
                       [bad for _, bad in refused], count=len(rcpts))
            done = iter(outcomes)
            return [bad if bad is not None else next(done) for bad in invalid]
        except Exception as exc:  # never let a bug lose track of a message: retry later
            log(f"Internal error during delivery: {type(exc).__name__}; will retry")
            failed = [Outcome(DEFERRED, "451 4.3.0 local error during delivery",
                              enhanced="4.3.0")] * len(rcpts)
            return _summarize(log, msgid, sender, rcpts, len(message), started, failed,
                              count=len(rcpts))
        finally:
            if not log.parked:
                log.close()
                self._sids.release(sid)

    # --- connection reuse -------------------------------------------------------------------------
    # One connection may carry several messages to the same destination in a row (Postfix's
    # connection cache does the same): connect, greeting, EHLO and TLS are paid once. After a
    # clean transaction the connection waits _IDLE seconds for the next message; RSET checks
    # that it is still alive before it is used again.

    def _park(self, conn: _Conn, ext: dict[str, str]) -> bool:
        """Keep ``conn`` for the next message to its destination. False: close it instead."""
        log = conn.log
        idle = self._idle.setdefault(log.key, [])
        if self._closing or conn.uses >= _MAX_USES or len(idle) >= self._config.delivery.per_domain:
            return False
        parked = _Parked(conn, ext)
        parked.timer = asyncio.get_running_loop().call_later(
            _IDLE, lambda: asyncio.ensure_future(self._retire(parked)))
        idle.append(parked)
        log.parked = True
        return True

    async def _reuse(self, key: str, msgid: str, sender: str, message: bytes,
                     rcpts: Sequence[str]) -> list[Outcome] | None:
        """Deliver over a parked connection, or None when there is none (or it broke before
        the message went out: then the caller opens a new one)."""
        idle = self._idle.get(key)
        while idle:
            parked = idle.pop()
            if parked.timer is not None:
                parked.timer.cancel()
            conn = parked.conn
            if _invalid_addresses(sender, rcpts) != [None] * len(rcpts):
                idle.append(parked)  # the slow path explains bad addresses; keep this one
                return None
            started = time.monotonic()
            try:
                outcomes, clean = await self._transaction(conn, parked.ext, msgid, sender,
                                                          message, rcpts, len(rcpts), started,
                                                          rset=True)
            except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError,
                    _HostFailed) as exc:
                conn.log(f"Connection to {conn.remote} failed: {_reason(exc)}")
                data_sent = conn.data_sent
                await self._end(conn, quit_first=False)
                if data_sent:
                    lost = [Outcome(DEFERRED, f"lost connection after data: {_reason(exc)}",
                                    conn.remote, "4.4.2")] * len(rcpts)
                    return _summarize(conn.log, msgid, sender, rcpts, len(message), started,
                                      lost, count=len(rcpts))
                continue  # try another parked connection, or a new one
            conn.log.parked = False
            if not (clean and self._park(conn, parked.ext)):
                await self._end(conn, quit_first=True)
            return outcomes
        return None

    async def _retire(self, parked: _Parked) -> None:
        idle = self._idle.get(parked.conn.log.key, [])
        if parked in idle:
            idle.remove(parked)
            await self._end(parked.conn, quit_first=True)

    async def _end(self, conn: _Conn, *, quit_first: bool) -> None:
        """Close a connection that outlived its deliver() call, and end its log session."""
        if quit_first:
            await conn.quit()
        conn.close()
        conn.log.parked = False
        conn.log.close()
        self._sids.release(conn.log.sid)

    async def close(self) -> None:
        """Server stopping: say QUIT on every parked connection."""
        self._closing = True
        for idle in self._idle.values():
            while idle:
                parked = idle.pop()
                if parked.timer is not None:
                    parked.timer.cancel()
                await self._end(parked.conn, quit_first=True)

    async def _deliver_valid(self, domain: str, log: _Log, msgid: str, sender: str,
                             message: bytes, rcpts: Sequence[str], started: float,
                             smart_host: bool, count: int) -> list[Outcome]:
        targets, failure = await self._route(domain, log, smart_host)
        if failure is None:
            outcomes, failure = await self._try_hosts(targets, log, msgid, sender, message,
                                                       rcpts, count)
            if outcomes is not None:
                return outcomes
        # No server answered for these recipients: the outcome still gets its *** lines.
        log(f"Not delivered: {failure.reply}")
        return _summarize(log, msgid, sender, rcpts, len(message), started,
                          [failure] * len(rcpts), count=count)

    async def _route(self, domain: str, log: _Log, smart_host: bool
                     ) -> tuple[list[Target], Outcome | None]:
        port = self._config.delivery.port
        relay = self._config.relay.host
        if smart_host and relay is not None:
            host, relay_port = relay
            if _is_ip(host):
                return [Target(host, host, relay_port)], None
            answer = await self._resolver.addresses(host)
            log(f"DNS query A/AAAA {host} (smart host): {answer.detail}")
            if answer.status is Status.OK:
                return [Target(host, a, relay_port) for a in answer.records], None
            status = DEFERRED if answer.status is Status.TEMPFAIL else FAILED
            return [], Outcome(status, f"smart host {host}: {answer.detail}",
                               enhanced="4.4.3" if status == DEFERRED else "5.4.4")
        route = await mx.route(self._resolver, domain, self._config.delivery.max_mx_hosts)
        if route.outcome != "hosts":
            log(fmt.dns_mx_failed(domain, route.detail))
        elif route.mx:
            log(fmt.dns_mx(domain, [(host, pref) for pref, host in route.mx]))
            log(f"Route: {route.detail}")
        else:
            log(fmt.dns_mx_failed(domain, f"no MX records; {route.detail}"))
        if route.outcome == "tempfail":
            return [], Outcome(DEFERRED, f"DNS lookup for {domain} failed: {route.detail}",
                               enhanced="4.4.3")
        if route.outcome == "permfail":
            reply = route.reply
            text = " ".join(reply.lines) if reply is not None else route.detail
            return [], Outcome(FAILED, text, enhanced=reply.enhanced if reply else "5.1.2")
        return [Target(h.name, a, port) for h in route.hosts for a in h.addresses], None

    async def _try_hosts(self, targets: list[Target], log: _Log, msgid: str, sender: str,
                         message: bytes, rcpts: Sequence[str], count: int
                         ) -> tuple[list[Outcome] | None, Outcome]:
        """The outcomes from the first host that took the transaction, or None and why no
        host did."""
        last = "no mail server to try"
        for target in targets:
            verify = self._config.delivery.tls != "off"
            for _ in range(2):  # a second time only after a certificate failed to verify
                try:
                    done = await self._session(target, log, msgid, sender, message, rcpts,
                                               count, verify=verify)
                    return done, done[0]
                except _RetryWithoutVerify:
                    verify = False
                    continue
                except _HostFailed as exc:
                    last = str(exc)
                    break
        return None, Outcome(DEFERRED, last, enhanced="4.4.1")

    # --- one connection ---------------------------------------------------------------------------
    async def _session(self, target: Target, log: _Log, msgid: str, sender: str, message: bytes,
                       rcpts: Sequence[str], count: int, *, verify: bool) -> list[Outcome]:
        d = self._config.delivery
        log(fmt.connecting(target.name, target.address, target.port))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    target.address, target.port,
                    local_addr=(d.source_address, 0) if d.source_address else None),
                d.connect_timeout)
        except (OSError, TimeoutError) as exc:
            reason = _reason(exc)
            log(fmt.connecting(target.name, target.address, target.port, reason))
            raise _HostFailed(f"{target.name} [{target.address}]: {reason}") from None
        sock = writer.get_extra_info("sockname")
        log.bind(str(sock[0]) if sock else self._fallback_ip)
        log(fmt.CONNECTED)
        conn = _Conn(reader, writer, log, d.command_timeout, target)
        try:
            ext = await self._open(conn, verify=verify)
            outcomes, clean = await self._transaction(conn, ext, msgid, sender, message, rcpts,
                                                      count, time.monotonic())
            if not (clean and self._park(conn, ext)):
                await conn.quit()
            return outcomes
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            reason = _reason(exc)
            log(f"Connection to {target.name} [{target.address}] failed: {reason}")
            if conn.data_sent:
                # RFC 5321 §6.1: after the data went out, a lost reply means we cannot know;
                # deliver again later (a duplicate is better than a loss).
                return [Outcome(DEFERRED, f"lost connection after data: {reason}",
                                conn.remote, "4.4.2")] * len(rcpts)
            raise _HostFailed(f"{target.name} [{target.address}]: {reason}") from None
        finally:
            if not log.parked:
                conn.close()

    async def _open(self, conn: _Conn, *, verify: bool) -> dict[str, str]:
        """Greeting, EHLO (or HELO) and STARTTLS when offered: the server's extensions."""
        hostname = self._config.server.hostname
        greeting = await conn.reply()
        if not greeting.is_positive:
            await conn.quit()
            raise _HostFailed(f"{conn.remote} greeted with {_line(greeting)}")
        ext = await self._hello(conn, hostname)
        if "STARTTLS" in ext and self._config.delivery.tls != "off":
            ext = await self._starttls(conn, hostname, verify=verify)
        return ext

    async def _transaction(self, conn: _Conn, ext: dict[str, str], msgid: str, sender: str,
                           message: bytes, rcpts: Sequence[str], count: int, started: float,
                           *, rset: bool = False) -> tuple[list[Outcome], bool]:
        """MAIL, RCPT, DATA for one message (after RSET on a reused connection). Returns the
        outcomes and whether the transaction ended cleanly (then the connection may carry the
        next message). With PIPELINING (RFC 2920) RSET, MAIL, every RCPT and DATA go out in
        one write, DATA last in the group: one round trip instead of three or more."""
        conn.uses += 1
        size_limit = ext.get("SIZE", "")
        if size_limit.isdigit() and int(size_limit) and len(message) > int(size_limit):
            text = f"message of {len(message)} bytes exceeds {conn.remote}'s limit of {size_limit}"
            conn.log(text)
            return _summarize(conn.log, msgid, sender, rcpts, len(message), started,
                              [Outcome(FAILED, f"552 5.3.4 {text}", conn.remote, "5.3.4")]
                              * len(rcpts), count=count), True
        eight_bit = not message.isascii()
        mail = mail_command(sender, len(message), eight_bit, ext)
        rcpt_lines = [rcpt_command(r) for r in rcpts]
        data_reply: ClientReply | None = None
        if "PIPELINING" in ext:
            group = (["RSET"] if rset else []) + [mail, *rcpt_lines, "DATA"]
            replies = await conn.commands(group, pipelining=True)
            if rset:
                if not replies[0].is_positive:
                    raise ConnectionResetError(f"RSET answered {_line(replies[0])}")
                replies = replies[1:]
            mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
            if data_reply.code == 354 and not (mail_reply.is_positive
                                                and any(r.is_positive for r in rcpt_replies)):
                # The server said 354 although nothing can be sent: end the empty data (RFC
                # 2920 §3.1) so the session stays in step, then report the refusals.
                await conn.send_data(b".\r\n", self._config.delivery.data_timeout)
                conn.data_sent = False
        else:
            if rset:
                [reset] = await conn.commands(["RSET"], pipelining=False)
                if not reset.is_positive:
                    raise ConnectionResetError(f"RSET answered {_line(reset)}")
            # Without PIPELINING each reply is awaited anyway: after a refused MAIL the RCPTs
            # would only collect "503 bad sequence" replies, so they are not sent.
            [mail_reply] = await conn.commands([mail], pipelining=False)
            rcpt_replies = await conn.commands(rcpt_lines, pipelining=False) \
                if mail_reply.is_positive else []
        if not mail_reply.is_positive:
            outcome = _outcome_of(mail_reply, conn.remote)
            if outcome.status == DEFERRED:
                await conn.quit()
                raise _HostFailed(f"{conn.remote} said {_line(mail_reply)}")
            return _summarize(conn.log, msgid, sender, rcpts, len(message), started,
                              [outcome] * len(rcpts), count=count), True
        outcomes: list[Outcome | None] = [
            None if r.is_positive else _outcome_of(r, conn.remote) for r in rcpt_replies]
        if all(o is not None for o in outcomes):
            return _summarize(conn.log, msgid, sender, rcpts, len(message), started,
                              [o for o in outcomes if o is not None], count=count), True
        if data_reply is None:
            [data_reply] = await conn.commands(["DATA"], pipelining=False)
        if data_reply.code != 354:
            final = _outcome_of(data_reply, conn.remote) if not data_reply.is_positive else \
                Outcome(DEFERRED, f"unexpected reply to DATA: {_line(data_reply)}",
                        conn.remote, "4.5.0")
            clean = False
        else:
            final_reply = await conn.send_data(encode_data(message),
                                               self._config.delivery.data_timeout)
            final = _outcome_of(final_reply, conn.remote)
            clean = True
            conn.data_sent = False  # this message is answered; the connection may go on
        result = [o if o is not None else final for o in outcomes]
        return _summarize(conn.log, msgid, sender, rcpts, len(message), started, result,
                          count=count), clean

    async def _hello(self, conn: _Conn, hostname: str) -> dict[str, str]:
        [ehlo] = await conn.commands([f"EHLO {hostname}"], pipelining=False)
        if ehlo.code == 250:
            return parse_ehlo(ehlo)
        if not ehlo.is_permanent:
            # 421 and other 4xx: the server is unavailable now, not ignorant of EHLO; HELO
            # would only meet a closed connection. Try the next host / later.
            await conn.quit()
            raise _HostFailed(f"{conn.remote} answered EHLO with {_line(ehlo)}")
        # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; fall back to HELO.
        [helo] = await conn.commands([f"HELO {hostname}"], pipelining=False)
        if not helo.is_positive:
            await conn.quit()
            raise _HostFailed(f"{conn.remote} refused HELO: {_line(helo)}")
        return {}

    async def _starttls(self, conn: _Conn, hostname: str, *, verify: bool) -> dict[str, str]:
        [ready] = await conn.commands(["STARTTLS"], pipelining=False)
        if ready.code != 220:
            conn.log(f"STARTTLS refused ({_line(ready)}); continuing without TLS")
            return await self._hello(conn, hostname)
        ctx = self._verify_ctx if verify else self._plain_ctx
        try:
            await conn.start_tls(ctx, conn.target.name if verify else None)
        except ssl.SSLCertVerificationError as exc:
            self._tls_failed()
            conn.log(f"TLS certificate of {conn.remote} did not verify ({exc.verify_message});"
                     " reconnecting for opportunistic TLS without verification (RFC 7435)")
            raise _RetryWithoutVerify from None
        except (ssl.SSLError, OSError) as exc:
            self._tls_failed()
            raise _HostFailed(f"TLS handshake with {conn.remote} failed: {_reason(exc)}") from None
        ssl_obj = conn.writer.get_extra_info("ssl_object")
        version = ssl_obj.version() if ssl_obj else "?"
        cipher = ssl_obj.cipher()[0] if ssl_obj and ssl_obj.cipher() else "?"
        conn.log(f"{fmt.tls_established(version, cipher)}, certificate "
                 f"{'verified' if verify else 'not verified'}")
        if self._metrics is not None:
            self._metrics.tls_session("outbound", version)
        # RFC 3207 §4.2: forget what the server said before TLS and ask again.
        return await self._hello(conn, hostname)

    def _tls_failed(self) -> None:
        if self._metrics is not None:
            self._metrics.tls_failure("outbound")


class _Conn:
    """The socket side of one client session: send commands, read replies, log both."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: _Log,
                 timeout: float, target: Target) -> None:
        self.reader = reader
        self.writer = writer
        self.log = log
        self.timeout = timeout
        self.target = target
        self.remote = f"{target.name} [{target.address}]"
        self.replies = ReplyReader()
        self.data_sent = False
        self.uses = 0  # messages carried

    async def reply(self, timeout: float | None = None) -> ClientReply:
        while True:
            got = self.replies.next_reply()
            if got is not None:
                for line in got.raw_lines:
                    self.log(fmt.received(fmt.sanitize(line)))
                return got
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout or self.timeout)
            if not chunk:
                raise ConnectionResetError("connection closed by the server")
            self.replies.feed(chunk)

    async def commands(self, lines: list[str], *, pipelining: bool) -> list[ClientReply]:
        """Send commands and read one reply each. With PIPELINING (RFC 2920) they go out in one
        write and the replies are read afterwards, in order."""
        if pipelining:
            for line in lines:
                self.log(fmt.sent(line))
            self.writer.write("".join(f"{line}\r\n" for line in lines).encode("ascii"))
            await self.writer.drain()
            return [await self.reply() for _ in lines]
        replies = []
        for line in lines:
            self.log(fmt.sent(line))
            self.writer.write(f"{line}\r\n".encode("ascii"))
            await self.writer.drain()
            replies.append(await self.reply())
        return replies

    async def send_data(self, payload: bytes, timeout: float) -> ClientReply:
        started = time.monotonic()
        self.writer.write(payload)
        self.data_sent = True
        await self.writer.drain()
        self.log(fmt.data_bytes(">>>", len(payload), max(time.monotonic() - started, 1e-6)))
        return await self.reply(timeout)

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str | None) -> None:
        # Anything the server sent after its 220 in the clear is discarded with the old reader.
        self.replies = ReplyReader()
        await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=server_hostname),
                               self.timeout)

    async def quit(self) -> None:
        try:
            self.log(fmt.sent("QUIT"))
            self.writer.write(b"QUIT\r\n")
            await self.writer.drain()
            await self.reply(timeout=min(self.timeout, 10.0))
        except (OSError, TimeoutError, ProtocolError):
            pass  # the outcome is already known; a server that hangs up on QUIT changes nothing

    def close(self) -> None:
        self.writer.close()


def _summarize(log: _Log, msgid: str, sender: str, rcpts: Sequence[str], size: int,
               started: float, outcomes: list[Outcome], *, count: int) -> list[Outcome]:
    """One ``***`` line per recipient, with the message ID of the receiving session. ``count``
    is the number of recipients this delivery was asked for (the ``<n>`` field)."""
    duration = fmt.hms(time.monotonic() - started)
    # Addresses may come from an alias target, not from a checked RCPT: a CR or LF in one must
    # not start a forged log line.
    shown_sender = fmt.sanitize(sender)
    for rcpt, outcome in zip(rcpts, outcomes, strict=True):
        log(fmt.summary(shown_sender, fmt.sanitize(rcpt), count, size, duration,
                        _STATUS_WORD[outcome.status], msgid))
    log.flush_soon()  # the end of a transaction: its story reaches the file now, not later
    return outcomes


def _invalid_addresses(sender: str, rcpts: Sequence[str]) -> list[Outcome | None]:
    """For each recipient, the permanent failure that stops it before any connection, or None.

    ``mail_command``/``rcpt_command`` refuse what cannot be sent without SMTPUTF8 (which this
    client never asks for) and anything with control characters (command injection). Such an
    address will not become sendable by waiting, so it fails now instead of being retried
    until the queue lifetime runs out.
    """
    try:
        mail_command(sender, None, False, {})
    except ValueError:
        # RFC 3463 X.1.7: bad sender's mailbox address syntax. Every recipient fails with it.
        bad = Outcome(FAILED, "553 5.1.7 sender address cannot be sent (not ASCII or control "
                      "characters)", enhanced="5.1.7")
        return [bad] * len(rcpts)
    out: list[Outcome | None] = []
    for rcpt in rcpts:
        try:
            rcpt_command(rcpt)
        except ValueError:
            # RFC 3463 X.1.3: bad destination mailbox address syntax.
            out.append(Outcome(FAILED, "553 5.1.3 recipient address cannot be sent (not ASCII "
                               "or control characters)", enhanced="5.1.3"))
        else:
            out.append(None)
    return out


def _outcome_of(reply: ClientReply, remote: str) -> Outcome:
    status = DELIVERED if reply.is_positive else DEFERRED if reply.is_temporary else FAILED
    enhanced = reply.enhanced or ("2.0.0" if status == DELIVERED else
                                  "4.0.0" if status == DEFERRED else "5.0.0")
    return Outcome(status, _line(reply), remote, enhanced)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _line(reply: ClientReply) -> str:
    """``550 5.1.1 text`` on one line, for the log and the DSN."""
    return f"{reply.code} {reply.text}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
