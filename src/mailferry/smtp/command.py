"""Command lines: one line of input → a Command, or the reply that explains why it is not one.

Sans-I/O (no sockets, no policy). RFC 5321 §4.1.1 grammar for verbs, §4.1.2 for paths, RFC 1870
for SIZE, RFC 6152 for BODY=8BITMIME. Parameters are split here; whether one is *supported* is
also decided here because it depends only on what we advertise in EHLO.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailferry import reply
from mailferry.address import Address, AddressError, parse_mailbox, split_path
from mailferry.reply import Reply

VERBS = frozenset(
    {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "EXPN",
     "STARTTLS", "AUTH"}
)
# Commands that must not have arguments (RFC 5321 §4.1.1.4, .5, .10; RFC 3207 §4).
NO_ARGS = frozenset({"DATA", "RSET", "QUIT", "STARTTLS"})


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case
    arg: str  # the rest of the line after the verb and one space, as sent


@dataclass(frozen=True, slots=True)
class MailArgs:
    path: str  # as sent between the angle brackets ("" for the null sender)
    address: Address | None  # None for <>
    size: int | None
    body: str | None


@dataclass(frozen=True, slots=True)
class RcptArgs:
    path: str
    address: Address


def check_line_chars(line: bytes) -> Reply | None:
    """Reject NUL and non-ASCII in commands (SMTPUTF8 is not offered, RFC 6531)."""
    if not line.isascii() or b"\x00" in line:
        return reply.BAD_CHARACTERS
    return None


def parse_command(line: str) -> Command | Reply:
    """Split the verb off. Unknown verbs → 500; arguments where none are allowed → 501."""
    verb, _, arg = line.partition(" ")
    verb = verb.upper()
    if verb not in VERBS:
        return reply.UNKNOWN_COMMAND
    if verb in NO_ARGS and arg.strip(" "):
        return reply.SYNTAX_NO_ARGS
    return Command(verb, arg)


def parse_params(text: str) -> dict[str, str | None] | None:
    """``KEY=VALUE KEY2`` → dict (keys upper-cased). None on a malformed parameter."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not key or not key.replace("-", "").isalnum() or (eq and not value):
            return None
        params[key.upper()] = value if eq else None
    return params


def _path_and_params(arg: str, keyword: str, syntax: Reply
                     ) -> tuple[str, dict[str, str | None]] | Reply:
    """``KEYWORD<path> params`` → (path, params), or ``syntax`` (the command's 501)."""
    if arg[:len(keyword)].upper() != keyword:
        return syntax
    try:
        path, rest = split_path(arg[len(keyword):])
    except AddressError:
        return syntax
    params = parse_params(rest)
    return syntax if params is None else (path, params)


def parse_mail(arg: str, *, max_size: int) -> MailArgs | Reply:
    """``FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]`` (RFC 5321 §4.1.1.2, RFC 1870, RFC 6152)."""
    split = _path_and_params(arg, "FROM:", reply.SYNTAX_MAIL)
    if isinstance(split, Reply):
        return split
    path, params = split
    size = None
    body = None
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                return reply.BAD_SIZE_PARAM
            size = int(value)
            if max_size and size > max_size:
                # RFC 1870 §6.3: a declared size over our fixed limit is refused at MAIL.
                return reply.MESSAGE_TOO_BIG
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return reply.BAD_BODY_PARAM
            body = value.upper()
        else:
            return reply.UNKNOWN_PARAM
    if path == "":
        return MailArgs("", None, size, body)
    try:
        address = parse_mailbox(path)
    except AddressError:
        return reply.BAD_SENDER_SYNTAX
    return MailArgs(path, address, size, body)


def parse_rcpt(arg: str) -> RcptArgs | Reply:
    """``TO:<path>`` (RFC 5321 §4.1.1.3). No RCPT parameters are offered, so any is 555."""
    split = _path_and_params(arg, "TO:", reply.SYNTAX_RCPT)
    if isinstance(split, Reply):
        return split
    path, params = split
    if params:
        return reply.UNKNOWN_PARAM
    if path.lower() == "postmaster":
        # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
        return RcptArgs(path, Address("postmaster", ""))
    try:
        address = parse_mailbox(path)
    except AddressError:
        return reply.BAD_RCPT_SYNTAX
    return RcptArgs(path, address)


def parse_helo(arg: str) -> str | Reply:
    """The client's name: a domain or an address literal. We are liberal (many clients send junk),
    but it must be one printable token."""
    name = arg.strip(" ")
    if not name or " " in name:
        return reply.SYNTAX_HELO
    return name
