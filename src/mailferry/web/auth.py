"""Who may look, and that a change was asked for by our own page: login, cookies, CSRF.

- Every browser gets a signed session cookie (HttpOnly, SameSite=Strict) holding a random
  nonce and, once logged in, the user. The signing key is random per process: a restart logs
  everyone out, and nothing secret is ever written to disk.
- A login is required unless the server listens on loopback only and names no admins
  (config.py refuses a non-loopback address without ``http.admins``). Admins are mailferry
  users, checked with the user directory's password check (argon2, in a worker thread). The
  API and /metrics also take HTTP Basic credentials, for tools.
- On loopback without login, a request must name a loopback host (``Host: 127.0.0.1:8025``,
  ``localhost``): a page of another site whose name is made to resolve to 127.0.0.1 (DNS
  rebinding) cannot read the UI.
- Every POST needs the CSRF token bound to its session cookie (a form field, or the
  ``X-CSRF-Token`` header for the API: a synchronizer token), and an Origin (else Referer)
  header, when a browser sends one, naming this very server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailferry.config import HttpConfig
from mailferry.web.services import PasswordChecker

COOKIE = "mailferry_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
MAX_AGE = 12 * 3600
_BASIC_CACHE_SECONDS = 60.0  # a tool polling with Basic auth is not argon2-checked every time


@dataclass(frozen=True)
class WebSession:
    nonce: str
    user: str | None
    issued: int


class Auth:
    def __init__(self, http: HttpConfig, checker: PasswordChecker | None) -> None:
        self._key = secrets.token_bytes(32)
        # Naming admins asks for logins even on loopback: a reverse proxy on this machine
        # reaches a loopback address too, and would otherwise open the UI to everyone.
        self.login_required = not http.loopback or bool(http.admins)
        self.admins = frozenset(a.lower() for a in http.admins)
        self._checker = checker
        self._basic_ok: dict[str, float] = {}  # sha256(user:password) → until when

    # -- cookies ---------------------------------------------------------------------------------
    def _mac(self, data: bytes) -> str:
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def new_session(self, user: str | None = None) -> WebSession:
        return WebSession(secrets.token_urlsafe(18), user, int(time.time()))

    def cookie_value(self, ws: WebSession) -> str:
        payload = json.dumps({"n": ws.nonce, "u": ws.user, "t": ws.issued},
                             separators=(",", ":")).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._mac(body.encode())}"

    def read_cookie(self, value: str | None) -> WebSession | None:
        if not value or not value.isascii() or value.count(".") != 1:
            return None  # (compare_digest refuses non-ASCII text: it would raise)
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(body.encode())):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            ws = WebSession(str(data["n"]), data["u"], int(data["t"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not 0 <= time.time() - ws.issued <= MAX_AGE:
            return None
        if ws.user is not None and ws.user not in self.admins:
            return None  # removed from http.admins since
        return ws

    # -- CSRF ------------------------------------------------------------------------------------
    def csrf_token(self, ws: WebSession) -> str:
        return self._mac(b"csrf:" + ws.nonce.encode())

    def csrf_ok(self, ws: WebSession, token: str | None) -> bool:
        return bool(token) and str(token).isascii() and \
            hmac.compare_digest(str(token), self.csrf_token(ws))

    # -- passwords -------------------------------------------------------------------------------
    async def check_password(self, user: str, password: str) -> bool:
        user = user.strip().lower()
        if user not in self.admins or self._checker is None or not password:
            return False
        checker = self._checker
        return await asyncio.to_thread(checker.check_password, user, password)

    async def check_basic(self, header: str) -> str | None:
        """The user of a valid ``Authorization: Basic …`` header, else None."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode(
                "utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not sep:
            return None
        key = hashlib.sha256(f"{user.lower()}\0{password}".encode()).hexdigest()
        now = time.monotonic()
        if self._basic_ok.get(key, 0.0) > now:
            return user.lower()
        if not await self.check_password(user, password):
            return None
        if len(self._basic_ok) > 1000:
            self._basic_ok.clear()
        self._basic_ok[key] = now + _BASIC_CACHE_SECONDS
        return user.lower()


def loopback_host(host_header: str | None) -> bool:
    """Whether a Host header names this machine by a loopback address or ``localhost``."""
    if not host_header:
        return False
    try:
        host = urlsplit("//" + host_header).hostname or ""
    except ValueError:  # "[::1" and the like
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """Origin (else Referer), when a browser sent one, must name this server's host and port
    (the Host header). The scheme is not compared: behind a TLS proxy the browser says https
    and we see http. A client that sends neither (curl, a script) passes here: the CSRF token
    still has to be right."""
    source = origin if origin and origin != "null" else None
    if source is None and origin == "null":
        return False  # an opaque origin (a sandboxed frame, a data: page): never ours
    if source is None:
        source = referer
    if not source:
        return True
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return bool(host) and parts.scheme in ("http", "https") and \
        parts.netloc.lower() == host.lower()
