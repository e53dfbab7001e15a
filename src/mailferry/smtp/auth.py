"""SASL for SMTP AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms, sans-I/O.

An :class:`Exchange` turns the AUTH command's initial response and the client's continuation lines
into either the next challenge (a ``334`` reply), the credentials to check, or an error reply.
Checking the password, logging and counting failures are the session's job.

Rules kept here:
- ``*`` alone cancels the exchange: ``501 5.0.0`` (RFC 4954 §4).
- A line that is not base64 is ``501 5.5.2`` (RFC 4954 §4).
- An initial response of ``=`` is an empty one (RFC 4954 §4), not a request for a challenge.
- PLAIN's authorization identity must be empty or the authentication identity itself: we do not
  let one user act as another (no proxy authorization). A different one is refused like a wrong
  password, so it says nothing about the account.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from mailferry import reply
from mailferry.reply import Reply

MECHANISMS = ("PLAIN", "LOGIN")

# RFC 4954 §4: LOGIN's prompts are not standardised; everybody sends these two (base64 of
# "Username:" and "Password:"), and some clients look for them.
_USERNAME_PROMPT = base64.b64encode(b"Username:").decode()
_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode()


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334 <text>`` and wait for the client's next line."""

    text: str

    @property
    def reply(self) -> Reply:
        return reply.auth_challenge(self.text)


@dataclass(frozen=True, slots=True)
class Credentials:
    mechanism: str
    username: str  # the authentication identity
    password: str = ""
    # False when the exchange itself already failed (PLAIN with someone else's authzid): the
    # session answers 535 without a password check, as for a wrong password.
    acceptable: bool = True

    def __repr__(self) -> str:  # never show a password in a traceback or a debug print
        return f"Credentials({self.mechanism!r}, {self.username!r}, password=***)"


Step = Challenge | Credentials | Reply


def decode(text: str) -> bytes | Reply:
    """One base64 line of the client (``=`` is empty), or ``501 5.5.2``."""
    if text == "=":
        return b""
    try:
        # validate=True: no characters outside the alphabet (b64decode ignores them otherwise).
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return reply.AUTH_BAD_BASE64


def _utf8(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def parse_plain(data: bytes) -> Credentials | Reply:
    """``authzid NUL authcid NUL passwd`` (RFC 4616 §2)."""
    parts = data.split(b"\x00")
    if len(parts) != 3:
        return reply.AUTH_BAD_PLAIN
    authzid, username, password = (_utf8(p) for p in parts)
    if authzid is None or username is None or password is None or not username or not password:
        return reply.AUTH_BAD_PLAIN
    acceptable = authzid == "" or authzid.lower() == username.lower()
    return Credentials("PLAIN", username, password, acceptable)


class Exchange:
    """One AUTH exchange. ``start()`` once, then ``step(line)`` for every continuation line,
    until it returns something other than a :class:`Challenge`."""

    def __init__(self, mechanism: str, initial: str | None) -> None:
        self.mechanism = mechanism.upper()
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unsupported mechanism {mechanism!r}")
        self._initial = initial
        self._username: str | None = None

    def start(self) -> Step:
        if self._initial is None:
            # PLAIN without initial response: an empty challenge (RFC 4616 §2, RFC 4954 §4).
            return Challenge("" if self.mechanism == "PLAIN" else _USERNAME_PROMPT)
        return self.step(self._initial)

    def step(self, line: str) -> Step:
        if line == "*":
            return reply.AUTH_CANCELLED
        data = decode(line)
        if isinstance(data, Reply):
            return data
        if self.mechanism == "PLAIN":
            return parse_plain(data)
        text = _utf8(data)
        if text is None:
            return reply.AUTH_BAD_PLAIN
        if self._username is None:
            if not text:
                return reply.AUTH_BAD_PLAIN
            self._username = text
            return Challenge(_PASSWORD_PROMPT)
        if not text:
            return reply.AUTH_BAD_PLAIN
        return Credentials("LOGIN", self._username, text)


def parse_auth_args(arg: str) -> tuple[str, str | None] | Reply:
    """``MECHANISM [initial-response]`` → (upper-cased mechanism, initial response or None)."""
    parts = arg.split(" ")
    if not arg or len(parts) > 2 or not parts[0]:
        return reply.SYNTAX_AUTH
    mechanism = parts[0].upper()
    if mechanism not in MECHANISMS:
        return reply.AUTH_UNKNOWN_MECHANISM
    initial = parts[1] if len(parts) == 2 else None
    if initial == "":
        return reply.SYNTAX_AUTH
    return mechanism, initial
