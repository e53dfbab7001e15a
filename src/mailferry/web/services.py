"""What the web app needs from the running server, as narrow interfaces.

The daemon builds a :class:`WebServices` from its live objects; tests can build one from files
alone. Queue control is a :class:`QueueControl` protocol (the control socket's service
implements it); without one, the queue pages and actions answer 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mailferry.config import Config, HttpConfig


class QueueControl(Protocol):
    """The queue operations the web UI uses (mailferry.control.service.QueueControl).

    Each raises ControlError (a user-readable message) for an unknown ID or a refused action;
    the API turns it into 404 / 400 / 409. ``actor`` names who acted, in the queue's log line.
    """

    async def list(self) -> list[dict[str, Any]]: ...

    async def show(self, msgid: str) -> dict[str, Any]: ...

    async def flush(self, msgid: str | None = None, domain: str | None = None, *,
                    actor: str = ...) -> Any: ...

    async def hold(self, msgid: str, *, actor: str = ...) -> Any: ...

    async def release(self, msgid: str, *, actor: str = ...) -> Any: ...

    async def delete(self, msgid: str, *, actor: str = ...) -> Any: ...

    async def bounce(self, msgid: str, *, actor: str = ...) -> Any: ...

    async def status(self) -> dict[str, Any]: ...


class ClientGuard(Protocol):
    """Intrusion prevention for the web's logins (inbound.listener.ServerContext implements it):
    a failed login counts as a failed AUTH of that address, and a blocked address is refused."""

    def client_blocked(self, ip: str) -> object | None: ...

    def offence(self, ip: str, reason: Any) -> object | None: ...


class PasswordChecker(Protocol):
    """verify.users.Directory's password check (blocking: called in a worker thread)."""

    def check_password(self, address: str, password: str) -> bool: ...


@dataclass
class WebServices:
    http: HttpConfig
    log_dir: Path  # the transaction log's directory (<log dir>/smtp)
    hostname: str = "mailferry"
    directory: PasswordChecker | None = None
    queue: QueueControl | None = None
    metrics_registry: Any = None  # a prometheus_client CollectorRegistry; None: a fresh one
    session_live: Callable[[str], bool] | None = None  # SID → open in this process now
    guard: ClientGuard | None = None  # None: logins are not counted (tests from files alone)

    @classmethod
    def from_config(cls, config: Config, **kw: Any) -> WebServices:
        return cls(http=config.http, log_dir=config.log_dir / "smtp",
                   hostname=config.server.hostname, **kw)
