"""An asyncio submission load client: a fresh TLS handshake and AUTH for every message.

smtp-source (Postfix's load generator) speaks neither TLS nor AUTH, so the submission benchmark
uses this client. ``sessions`` concurrent sessions send ``messages`` messages between them, each
over a connection of its own, as a mail client (MUA) submits mail::

    connect, banner 220, EHLO 250 (STARTTLS offered), STARTTLS 220, TLS handshake,
    EHLO 250 (AUTH <mech> offered), AUTH PLAIN 235 (or LOGIN 334 334 235),
    MAIL FROM 250, RCPT TO 250, DATA 354, message 250, QUIT 221

With ``smtps`` the TLS handshake comes first (implicit TLS, RFC 8314) and there is no STARTTLS.
Every reply code is checked exactly; a message whose session goes wrong before its 250 counts
as failed. There is no TLS session resumption (every handshake is a full one, as for a client
that keeps no session cache) and no pipelining.

Per message it records

* ``latency``      - connect to the final 250 of the message: what the submitting client waits;
* ``data``         - end of data (the body and ``<CRLF>.<CRLF>`` in one write) to the final reply;
* ``tls``          - STARTTLS command (or, with smtps, connect) to the end of the TLS handshake;
* ``ehlo``         - the EHLO after the handshake, command to reply;
* ``auth``         - the AUTH exchange, first command to 235.

``ehlo`` is worth a look: with TLS 1.3 the server sends its session tickets after the handshake,
while the client is already sending EHLO; a server that leaves Nagle's algorithm on (Postfix)
then holds its EHLO reply until the client's delayed ACK of the tickets, about 40 ms on Linux.
``tls_max="1.2"`` (tickets inside the handshake) shows the difference.

Only loopback addresses; every run is bounded by the message count, a per-reply timeout and a
total time limit. Usable as a module (``run_load`` / ``run``) and from the command line, which
prints a JSON summary::

    python bench/tlsload.py --port 5870 --cafile ca.pem --user user@bench.test --password pw \\
        --messages 500 --sessions 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.loadclient import (  # noqa: E402
    SmtpFailure,
    drive_sessions,
    in_fresh_loop,
    make_message,
)

AUTH_MECHANISMS = ("plain", "login")


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``th percentile (nearest rank) of ``values``; NaN if there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100.0 * len(ordered))) - 1]


@dataclass
class TlsLoadResult:
    messages: int  # asked for
    sessions: int
    size: int
    accepted: int = 0  # messages whose final reply was 250
    failed: int = 0  # messages lost: a wrong reply or a broken connection before their 250
    session_errors: int = 0  # sessions that went wrong after their message was accepted (QUIT)
    elapsed: float = 0.0  # wall time of the whole run, seconds
    latency: list[float] = field(default_factory=list)  # connect -> final 250
    data: list[float] = field(default_factory=list)  # end of data -> final 250
    tls: list[float] = field(default_factory=list)  # STARTTLS (or connect) -> handshake done
    ehlo: list[float] = field(default_factory=list)  # EHLO after the handshake -> 250
    auth: list[float] = field(default_factory=list)  # AUTH -> 235
    tls_version: str = ""  # as negotiated by the first session that got that far
    cipher: str = ""
    errors: list[str] = field(default_factory=list)  # the first few distinct failures
    timed_out: bool = False

    @property
    def rate(self) -> float:
        """Accepted messages per second of wall time."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.timed_out and self.accepted == self.messages

    def summary(self) -> dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if not isinstance(v, list)}
        out["errors"] = self.errors
        out["rate"] = round(self.rate, 1)
        for name in ("latency", "data", "tls", "ehlo", "auth"):
            values = getattr(self, name)
            for pct in (50, 99):
                value = percentile(values, pct)
                out[f"{name}_p{pct}_ms"] = None if math.isnan(value) else round(value * 1000, 3)
        return out


TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(cafile: str | None, insecure: bool = False,
                   tls_max: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the server against ``cafile`` (or nothing if
    ``insecure``), at most TLS ``tls_max`` ("1.2" or "1.3"; default: the library's best).
    No session is ever reused: asyncio's start_tls takes none."""
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=cafile)
    if tls_max is not None:
        context.maximum_version = TLS_VERSIONS[tls_max]
    return context


async def _reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, list[str]]:
    """Read one SMTP reply; return (code, the text of every line)."""
    lines: list[str] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("connection closed by the server")
        if len(line) < 4 or not line[:3].isdigit():
            raise SmtpFailure(f"malformed reply {line!r}")
        lines.append(line[4:].decode("utf-8", "replace").rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def _expect(reader: asyncio.StreamReader, expect: int, what: str,
                  timeout: float) -> list[str]:
    code, lines = await _reply(reader, timeout)
    if code != expect:
        raise SmtpFailure(f"{what}: expected {expect}, got {code} {' / '.join(lines)}")
    return lines


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str,
                   expect: int, timeout: float, what: str | None = None) -> list[str]:
    writer.write(line.encode("ascii") + b"\r\n")
    return await _expect(reader, expect, what or line.split(":")[0].split(" ")[0], timeout)


def _offers(ehlo_lines: list[str], keyword: str, argument: str | None = None) -> bool:
    """Whether the EHLO reply offers ``keyword`` (with ``argument`` among its parameters)."""
    for line in ehlo_lines[1:]:
        words = line.upper().replace("=", " ").split()
        if words and words[0] == keyword.upper():
            return argument is None or argument.upper() in words[1:]
    return False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


async def run_load(
    host: str,
    port: int,
    *,
    messages: int,
    sessions: int,
    username: str,
    password: str,
    size: int = 4096,
    sender: str | None = None,
    recipient: str = "user@bench.test",
    smtps: bool = False,
    auth: str = "plain",
    cafile: str | None = None,
    insecure: bool = False,
    tls_max: str | None = None,
    server_hostname: str | None = None,
    reply_timeout: float = 60.0,
    total_timeout: float = 600.0,
    helo: str = "tlsload.bench.test",
) -> TlsLoadResult:
    """Submit ``messages`` messages over ``sessions`` concurrent sessions; see the module doc."""
    if messages < 0 or sessions < 1:
        raise ValueError("need messages >= 0 and sessions >= 1")
    if auth not in AUTH_MECHANISMS:
        raise ValueError(f"auth: one of {AUTH_MECHANISMS}")
    sender = sender or username
    context = client_context(cafile, insecure, tls_max)
    hostname = server_hostname or host
    result = TlsLoadResult(messages=messages, sessions=sessions, size=size)
    next_seq = 0

    def take() -> int | None:
        nonlocal next_seq
        if next_seq >= messages:
            return None
        next_seq += 1
        return next_seq

    def note_error(text: str) -> None:
        if len(result.errors) < 10 and text not in result.errors:
            result.errors.append(text)

    async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        began = time.perf_counter()
        if auth == "plain":
            initial = _b64("\0" + username + "\0" + password)  # RFC 4616: authzid NUL authcid NUL
            await _command(reader, writer, f"AUTH PLAIN {initial}", 235, reply_timeout,
                           "AUTH PLAIN")
        else:
            await _command(reader, writer, "AUTH LOGIN", 334, reply_timeout, "AUTH LOGIN")
            await _command(reader, writer, _b64(username), 334, reply_timeout, "AUTH username")
            await _command(reader, writer, _b64(password), 235, reply_timeout, "AUTH password")
        result.auth.append(time.perf_counter() - began)

    async def submit(seq: int) -> None:
        """One message over one fresh connection; counts it as accepted or failed."""
        began = time.perf_counter()
        accepted = False
        writer: asyncio.StreamWriter | None = None
        try:
            if smtps:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=context, server_hostname=hostname,
                                            ssl_handshake_timeout=reply_timeout),
                    reply_timeout,
                )
                result.tls.append(time.perf_counter() - began)
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), reply_timeout
                )
            await _expect(reader, 220, "greeting", reply_timeout)
            ehlo_began = time.perf_counter()
            ehlo = await _command(reader, writer, f"EHLO {helo}", 250, reply_timeout)
            if smtps:
                result.ehlo.append(time.perf_counter() - ehlo_began)
            else:
                if not _offers(ehlo, "STARTTLS"):
                    raise SmtpFailure("EHLO: STARTTLS not offered")
                tls_began = time.perf_counter()
                await _command(reader, writer, "STARTTLS", 220, reply_timeout)
                await writer.start_tls(context, server_hostname=hostname,
                                       ssl_handshake_timeout=reply_timeout)
                ehlo_began = time.perf_counter()
                result.tls.append(ehlo_began - tls_began)
                ehlo = await _command(reader, writer, f"EHLO {helo}", 250, reply_timeout)
                result.ehlo.append(time.perf_counter() - ehlo_began)
            if not result.tls_version:
                tls = writer.get_extra_info("ssl_object")
                if tls is not None:
                    result.tls_version, result.cipher = str(tls.version()), tls.cipher()[0]
            if not _offers(ehlo, "AUTH", auth):
                raise SmtpFailure(f"EHLO after TLS: AUTH {auth.upper()} not offered")
            await authenticate(reader, writer)
            await _command(reader, writer, f"MAIL FROM:<{sender}>", 250, reply_timeout)
            await _command(reader, writer, f"RCPT TO:<{recipient}>", 250, reply_timeout)
            await _command(reader, writer, "DATA", 354, reply_timeout)
            data_began = time.perf_counter()
            writer.write(make_message(size, sender, recipient, seq))
            await _expect(reader, 250, "end of data", reply_timeout)
            finished = time.perf_counter()
            accepted = True
            result.accepted += 1
            result.latency.append(finished - began)
            result.data.append(finished - data_began)
            await _command(reader, writer, "QUIT", 221, reply_timeout)
        except (OSError, TimeoutError, SmtpFailure, ConnectionError, ssl.SSLError) as exc:
            if accepted:
                result.session_errors += 1
            else:
                result.failed += 1
            note_error(f"{type(exc).__name__}: {exc}")
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                    await asyncio.wait_for(writer.wait_closed(), 5.0)

    async def session() -> None:
        while (seq := take()) is not None:
            await submit(seq)

    await drive_sessions(session, min(sessions, max(messages, 1)), total_timeout, result,
                         note_error)
    return result


def run(host: str, port: int, **kwargs: object) -> TlsLoadResult:
    """``run_load`` in a fresh event loop (uvloop when installed)."""
    return in_fresh_loop(run_load(host, port, **kwargs))  # type: ignore[arg-type]


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", "-m", type=int, default=500)
    parser.add_argument("--sessions", "-s", type=int, default=10)
    parser.add_argument("--size", "-l", type=int, default=4096, help="body bytes per message")
    parser.add_argument("--user", required=True, help="login name for AUTH")
    parser.add_argument("--password", default=None,
                        help="AUTH password (default: $TLSLOAD_PASSWORD)")
    parser.add_argument("--auth", choices=AUTH_MECHANISMS, default="plain")
    parser.add_argument("--from", dest="sender", default=None, help="default: --user")
    parser.add_argument("--to", dest="recipient", default="user@bench.test")
    parser.add_argument("--smtps", action="store_true",
                        help="implicit TLS (handshake first) instead of STARTTLS")
    parser.add_argument("--cafile", default=None, help="CA to verify the server against")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's certificate")
    parser.add_argument("--tls-max", choices=sorted(TLS_VERSIONS), default=None,
                        help="highest TLS version to offer (default: the library's best)")
    parser.add_argument("--servername", default=None,
                        help="name to verify the certificate for (default: --host)")
    parser.add_argument("--timeout", type=float, default=600.0, help="total time limit, s")
    args = parser.parse_args(argv)
    if not is_loopback(args.host):
        parser.error("the load client only talks to loopback addresses")
    password = args.password if args.password is not None else os.environ.get("TLSLOAD_PASSWORD")
    if password is None:
        parser.error("give --password or set TLSLOAD_PASSWORD")
    result = run(
        args.host, args.port, messages=args.messages, sessions=args.sessions, size=args.size,
        username=args.user, password=password, sender=args.sender, recipient=args.recipient,
        smtps=args.smtps, auth=args.auth, cafile=args.cafile, insecure=args.insecure,
        tls_max=args.tls_max, server_hostname=args.servername, total_timeout=args.timeout,
    )
    json.dump(result.summary(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
