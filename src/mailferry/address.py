"""Envelope addresses: parse the path in MAIL FROM / RCPT TO (RFC 5321 §4.1.2) and normalise.

Pure functions, no I/O. Source routes, quoted local parts with '@', '%' hacks and bang paths are
recognised here so that policy can refuse them: they are the classic open-relay tricks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 5321 §4.1.2: Dot-string local part, or a quoted string; domain of letters/digits/hyphens,
# or an address literal. We accept the common subset and report anything else as a syntax error.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX_RE = re.compile(rf"^(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})\Z")
_ROUTE_RE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed mailbox. ``local`` keeps its case (RFC 5321 §2.4); ``domain`` is lower-cased."""

    local: str
    domain: str
    source_route: bool = False

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def quoted(self) -> bool:
        return self.local.startswith('"')

    @property
    def key(self) -> str:
        """The lookup key for the user directory: the whole address, lower-cased."""
        return f"{self.local.lower()}@{self.domain}"


class AddressError(ValueError):
    """The path is not a valid RFC 5321 mailbox."""


def parse_mailbox(text: str) -> Address:
    """Parse ``local@domain`` (no angle brackets). A leading source route is kept as a flag."""
    route = False
    m = _ROUTE_RE.match(text)
    if m:
        # RFC 5321 §4.1.1.3: servers SHOULD ignore source routes; we flag them so policy refuses
        # them for relay purposes (a classic open-relay trick: @local:user@other).
        route = True
        text = text[m.end():]
    m = _MAILBOX_RE.match(text)
    if not m:
        raise AddressError(text)
    domain = m.group("domain").rstrip(".").lower()
    if len(m.group("local")) > 64 or len(domain) > 255:
        raise AddressError(text)
    return Address(m.group("local"), domain, route)


def split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` into the path (without brackets) and the rest.

    Raises AddressError when the angle brackets are missing or unbalanced.
    """
    arg = arg.strip(" ")
    if not arg.startswith("<"):
        raise AddressError(arg)
    end = arg.find(">")
    if end < 0:
        raise AddressError(arg)
    return arg[1:end], arg[end + 1:].strip(" ")
