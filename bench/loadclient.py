"""A small asyncio SMTP load client that times every message's final reply.

smtp-source (Postfix's load generator) only reports totals, so the latency half of the accept
benchmark uses this client: ``sessions`` concurrent SMTP sessions send ``messages`` messages of
``size`` body bytes between them, and for each message the time from writing the end of its data
(the body and its terminating ``<CRLF>.<CRLF>`` go out in one write) to reading the server's final
reply is recorded. That interval is what a sender waits for "250 queued": the server's receive,
queue write and fsync.

Like smtp-source by default, every message gets a connection of its own (banner, EHLO, MAIL,
RCPT, DATA, QUIT); ``per_connection`` > 1 (0 = unlimited) sends several over one session. No
pipelining. Everything is bounded: the message count, the per-reply timeout and the total time.

Usable as a module (``run_load``) and from the command line, which prints JSON::

    python bench/loadclient.py --port 2525 --messages 1000 --sessions 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class SmtpFailure(Exception):
    """The server said something other than the expected reply."""


@dataclass
class LoadResult:
    messages: int  # asked for
    sessions: int
    size: int
    accepted: int = 0  # messages whose final reply was 2xx
    failed: int = 0  # messages that got a non-2xx reply or lost their connection
    elapsed: float = 0.0  # wall time of the whole run, seconds
    latencies: list[float] = field(default_factory=list)  # end of data -> final reply, seconds
    errors: list[str] = field(default_factory=list)  # the first few distinct failures
    timed_out: bool = False

    @property
    def rate(self) -> float:
        """Accepted messages per second of wall time."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, pct: float) -> float:
        """The ``pct``th percentile (nearest rank) of the final-reply latency, in seconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        del data["latencies"]
        data.update(
            rate=round(self.rate, 1),
            p50_ms=round(self.percentile(50) * 1000, 3),
            p99_ms=round(self.percentile(99) * 1000, 3),
            max_ms=round(max(self.latencies, default=math.nan) * 1000, 3),
        )
        return data


def make_message(size: int, sender: str, recipient: str, seq: int) -> bytes:
    """A message with a few headers and ``size`` body bytes, dot-stuffed, ending in CRLF.CRLF.

    Body lines are like smtp-source's: 78 characters and CRLF, the last one shorter.
    """
    headers = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: load {seq}\r\n"
        f"Message-ID: <load.{seq}.{time.time_ns()}@loadclient.bench.test>\r\n\r\n"
    )
    lines: list[str] = []
    remaining = size
    n = 0
    while remaining > 0:
        width = min(78, max(remaining - 2, 1))
        lines.append((str(n % 10) + "X" * 77)[:width])
        remaining -= width + 2
        n += 1
    return (headers + "".join(line + "\r\n" for line in lines) + ".\r\n").encode("ascii")


async def _reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    """Read one SMTP reply; return (code, text of the last line)."""
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("connection closed by the server")
        if len(line) < 4 or not line[:3].isdigit():
            raise SmtpFailure(f"malformed reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3]), line.decode("utf-8", "replace").rstrip()


async def _command(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    line: str,
    expect: int,
    timeout: float,
) -> None:
    writer.write(line.encode("ascii") + b"\r\n")
    code, text = await _reply(reader, timeout)
    if code // 100 != expect // 100:
        raise SmtpFailure(f"{line.split(':')[0]}: {text}")


async def run_load(
    host: str,
    port: int,
    *,
    messages: int,
    sessions: int,
    size: int = 4096,
    sender: str = "sender@bench.test",
    recipient: str = "user@bench.test",
    per_connection: int = 1,
    reply_timeout: float = 60.0,
    total_timeout: float = 600.0,
    helo: str = "loadclient.bench.test",
) -> LoadResult:
    """Send ``messages`` messages over ``sessions`` concurrent sessions; see the module doc."""
    if messages < 0 or sessions < 1:
        raise ValueError("need messages >= 0 and sessions >= 1")
    result = LoadResult(messages=messages, sessions=sessions, size=size)
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

    async def session() -> None:
        while True:
            seq = take()
            if seq is None:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), reply_timeout
                )
            except (OSError, TimeoutError) as exc:
                result.failed += 1
                note_error(f"connect: {exc!r}")
                continue
            sent_here = 0
            try:
                code, text = await _reply(reader, reply_timeout)
                if code != 220:
                    raise SmtpFailure(f"greeting: {text}")
                await _command(reader, writer, f"EHLO {helo}", 250, reply_timeout)
                while seq is not None:
                    await _command(reader, writer, f"MAIL FROM:<{sender}>", 250, reply_timeout)
                    await _command(reader, writer, f"RCPT TO:<{recipient}>", 250, reply_timeout)
                    await _command(reader, writer, "DATA", 354, reply_timeout)
                    payload = make_message(size, sender, recipient, seq)
                    started = time.perf_counter()
                    writer.write(payload)
                    code, text = await _reply(reader, reply_timeout)
                    finished = time.perf_counter()
                    if code // 100 != 2:
                        raise SmtpFailure(f"end of data: {text}")
                    result.accepted += 1
                    result.latencies.append(finished - started)
                    sent_here += 1
                    seq = None
                    if per_connection == 0 or sent_here < per_connection:
                        seq = take()
                await _command(reader, writer, "QUIT", 221, reply_timeout)
            except (OSError, TimeoutError, SmtpFailure, ConnectionError) as exc:
                if seq is not None:  # the message in flight is lost
                    result.failed += 1
                note_error(f"{type(exc).__name__}: {exc}")
            finally:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 5.0)

    await drive_sessions(session, min(sessions, max(messages, 1)), total_timeout, result,
                         note_error)
    return result


async def drive_sessions(session: Callable[[], Awaitable[None]], count: int,
                         total_timeout: float, result: LoadResult | Any,
                         note_error: Callable[[str], None]) -> None:
    """Run ``count`` sessions at once, bounded by ``total_timeout``: what is still running then is
    cancelled and the run marked ``timed_out``. Sets ``result.elapsed`` (shared by tlsload.py)."""
    began = time.perf_counter()
    tasks = [asyncio.create_task(session()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=total_timeout)
    for task in pending:
        task.cancel()
    if pending:
        result.timed_out = True
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            note_error(repr(task.exception()))
    result.elapsed = time.perf_counter() - began


def in_fresh_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a load coroutine in a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run(host: str, port: int, **kwargs: object) -> LoadResult:
    """``run_load`` in a fresh event loop."""
    return in_fresh_loop(run_load(host, port, **kwargs))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", "-m", type=int, default=1000)
    parser.add_argument("--sessions", "-s", type=int, default=10)
    parser.add_argument("--size", "-l", type=int, default=4096, help="body bytes per message")
    parser.add_argument("--from", dest="sender", default="sender@bench.test")
    parser.add_argument("--to", dest="recipient", default="user@bench.test")
    parser.add_argument(
        "--per-connection", type=int, default=1,
        help="messages per connection (default 1, like smtp-source; 0 = unlimited)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="total time limit, s")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("::1", "localhost"):
        parser.error("the load client only talks to loopback addresses")
    result = run(
        args.host, args.port, messages=args.messages, sessions=args.sessions, size=args.size,
        sender=args.sender, recipient=args.recipient, per_connection=args.per_connection,
        total_timeout=args.timeout,
    )
    json.dump(result.summary(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result.failed == 0 and not result.timed_out else 1


if __name__ == "__main__":
    sys.exit(main())
