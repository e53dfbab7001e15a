"""Starting TLS on a served connection: STARTTLS (RFC 3207) and implicit TLS (RFC 8314).

Kept apart from session.py because of one subtlety of uvloop (see :func:`start_tls_now`), and
so that the session reads as SMTP, not as event-loop plumbing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

from mailferry.txlog import format as fmt

TLS_HANDSHAKE_TIMEOUT = 30.0  # seconds; a client that opens TLS and stalls holds a session slot


def tls_error(exc: BaseException) -> str:
    """One line for a failed handshake: the OpenSSL reason, else the exception's words."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no handshake within {TLS_HANDSHAKE_TIMEOUT:g} s"
    return fmt.sanitize(str(exc) or type(exc).__name__)


def start_tls_now(transport: asyncio.BaseTransport, protocol: asyncio.Protocol,
                   tls: ssl.SSLContext) -> Awaitable[asyncio.BaseTransport | None]:
    """``loop.start_tls`` with its first step run at once, for ``connection_made`` on smtps.

    Why: uvloop starts reading as soon as ``connection_made`` returns (whatever
    ``pause_reading`` said), so a task started there runs only after the client's ClientHello
    was already handed to the SMTP protocol, and the handshake hangs. ``start_tls`` puts the TLS
    protocol in place in its first step, before its first ``await``: running that step now
    means the first bytes go to TLS (asyncio's own loop is served the same way). The rest of
    the coroutine continues in the session's task (:class:`_Continue`).
    """
    loop = asyncio.get_running_loop()
    coro = loop.start_tls(transport, protocol, tls, server_side=True,  # type: ignore[arg-type]
                          ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
    done: asyncio.Future[asyncio.BaseTransport | None] = loop.create_future()
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        done.set_result(stop.value)
        return done
    except Exception as exc:
        done.set_exception(exc)
        return done
    return _Continue(coro, pending)


class _Continue:
    """Await a coroutine that has already run its first step and is waiting on ``pending``."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                yield pending  # the task waits on the future the coroutine waits on
            except BaseException as exc:  # cancelled while waiting: pass it on
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                return stop.value
