"""The one catalogue of SMTP replies: code, enhanced status code (RFC 3463) and text.

Every reply the server sends is built here, so that codes stay consistent and a reviewer can read
the whole vocabulary of the server in one page. Texts never contain internal error details
(maddy's rule: the client sees a generic reply, the transaction log sees the detail).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str  # "" for replies that carry no enhanced code (220, 221 banner lines, 354)
    text: str | tuple[str, ...]
    # Rendered once: most replies are module constants sent thousands of times a second.
    lines: tuple[str, ...] = field(init=False, repr=False, compare=False)
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        if isinstance(self.text, str):  # the common case, built per message: keep it cheap
            line = f"{self.code} {prefix}{self.text}"
            object.__setattr__(self, "lines", (line,))
            object.__setattr__(self, "wire", line.encode("ascii", "replace") + b"\r\n")
            return
        texts = self.text
        last = len(texts) - 1
        # RFC 5321 §4.2.1: "250-first" ... "250 last"; the enhanced code goes on every line of
        # a multi-line reply (RFC 2034 §4).
        lines = tuple(f"{self.code}{' ' if i == last else '-'}{prefix}{t}"
                      for i, t in enumerate(texts))
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "wire",
                           ("\r\n".join(lines) + "\r\n").encode("ascii", "replace"))

    def encode(self) -> bytes:
        return self.wire

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500


def r(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, text)


# --- connection -------------------------------------------------------------------------------
def greeting(hostname: str, date: str) -> Reply:
    return Reply(220, "", f"{hostname} ESMTP mailferry; {date}")


def closing(hostname: str) -> Reply:
    return r(221, "2.0.0", f"{hostname} closing connection")


TOO_MANY_SESSIONS = r(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_IP = r(421, "4.7.0", "Too many connections from your address, try again later")
IDLE_TIMEOUT = r(421, "4.4.2", "Idle timeout, closing connection")
SHUTTING_DOWN = r(421, "4.3.2", "Service shutting down, closing connection")
BARE_NEWLINE_CLOSE = r(421, "4.5.0", "Bare CR or LF not allowed, closing connection")
LOCAL_ERROR = r(451, "4.3.0", "Local error in processing, try again later")

# --- syntax and sequence (RFC 5321 §4.2.2, §4.3.2) ----------------------------------------------
UNKNOWN_COMMAND = r(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG = r(500, "5.5.6", "Line too long")
BARE_NEWLINE = r(500, "5.5.2", "Bare CR or LF not allowed; use CRLF")
BAD_CHARACTERS = r(500, "5.5.2", "Command contains NUL or non-ASCII characters")
SYNTAX_HELO = r(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_MAIL = r(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT = r(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
SYNTAX_NO_ARGS = r(501, "5.5.4", "Syntax error: no parameters allowed")
BAD_SENDER_SYNTAX = r(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = r(501, "5.1.3", "Bad recipient address syntax")
NEED_HELO = r(503, "5.5.1", "Send EHLO/HELO first")
NESTED_MAIL = r(503, "5.5.1", "Sender already specified")
NEED_MAIL = r(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = r(503, "5.5.1", "Need RCPT before DATA")
NOT_IMPLEMENTED = r(502, "5.5.1", "Command not implemented")
UNKNOWN_PARAM = r(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
BAD_SIZE_PARAM = r(501, "5.5.4", "Bad SIZE parameter")
BAD_BODY_PARAM = r(501, "5.5.4", "Bad BODY parameter")

# --- positive ----------------------------------------------------------------------------------
OK = r(250, "2.0.0", "OK")
RESET = r(250, "2.0.0", "Reset state")
NOOP = r(250, "2.0.0", "OK")
VRFY = r(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
START_DATA = Reply(354, "", 'Enter mail, end with "." on a line by itself')
HELP = Reply(
    214,
    "2.0.0",
    ("mailferry: commands EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
     "See RFC 5321 and https://www.rfc-editor.org/rfc/rfc5321"),
)


def sender_ok(path: str) -> Reply:
    return r(250, "2.1.0", f"<{path}>... Sender ok")


def recipient_ok(path: str, *, forward: bool) -> Reply:
    return r(250, "2.1.5", f"<{path}>... Recipient ok{'; will forward' if forward else ''}")


def accepted(size: int, duration: str, msgid: str) -> Reply:
    return r(250, "2.6.0",
             f"{size} bytes received in {duration}; Message id {msgid} accepted for delivery")


def helo(hostname: str, client_name: str, client_ip: str) -> Reply:
    return r(250, "", f"{hostname} Hello {client_name} [{client_ip}]")


def ehlo(hostname: str, client_name: str, client_ip: str, extensions: list[str]) -> Reply:
    return Reply(250, "", (f"{hostname} Hello {client_name} [{client_ip}]", *extensions))


# --- policy ------------------------------------------------------------------------------------
NO_SUCH_USER = r(550, "5.1.1", "Mailbox unavailable: no such user here")
RELAY_DENIED = r(554, "5.7.1", "Relay access denied")
TOO_MANY_RECIPIENTS = r(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = r(552, "5.3.4", "Message size exceeds fixed maximum message size")
SENDER_DOMAIN_UNKNOWN = r(550, "5.1.8", "Sender address rejected: domain not found")
SENDER_DOMAIN_TEMPFAIL = r(450, "4.1.8", "Sender address rejected: domain lookup failed, try again")
CLIENT_RDNS_REJECT = r(550, "5.7.25", "Client host rejected: cannot find your reverse hostname")
TEXT_LINE_TOO_LONG = r(550, "5.6.0", "Message has a line longer than 998 characters (RFC 5322)")
BARE_NEWLINE_DATA = r(550, "5.6.0", "Message contains bare CR or LF; use CRLF line endings")
EIGHTBIT_NOT_DECLARED = r(550, "5.6.0", "Message contains NUL bytes")
SENDER_NOT_OWNED = r(553, "5.7.1", "Sender address rejected: not owned by the authenticated user")

# --- TLS (RFC 3207) ----------------------------------------------------------------------------
READY_TLS = r(220, "2.0.0", "Ready to start TLS")
TLS_ALREADY_ACTIVE = r(503, "5.5.1", "TLS already active")
# RFC 3207 §4: a server that requires TLS answers other commands with this.
STARTTLS_FIRST = r(530, "5.7.0", "Must issue a STARTTLS command first")

# --- AUTH (RFC 4954 §4, §6) ---------------------------------------------------------------------
def auth_challenge(text: str) -> Reply:
    """``334 <base64>``: a SASL challenge (harmless prompts such as ``VXNlcm5hbWU6``)."""
    return Reply(334, "", text)


AUTH_OK = r(235, "2.7.0", "Authentication successful")
AUTH_FAILED = r(535, "5.7.8", "Authentication credentials invalid")
AUTH_NEEDS_TLS = r(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = r(530, "5.7.0", "Authentication required")
AUTH_TEMPFAIL = r(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_ALREADY = r(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = r(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_UNKNOWN_MECHANISM = r(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = r(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = r(501, "5.5.2", "Invalid base64 data")
AUTH_BAD_PLAIN = r(501, "5.5.2", "Malformed authentication data")
SYNTAX_AUTH = r(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")

# --- intrusion prevention (inbound/guard.py) ----------------------------------------------------
# The reason code is in the text so that `mailferry report` counts refusals by it; the detail
# (counts, expiry) is only in the transaction log.
# RFC 3463 X.5.1 "invalid command": talking before the greeting is a protocol violation.
PREGREET = r(554, "5.5.1", "Protocol error: client talked before the greeting")
MESSAGE_RATE = r(450, "4.7.1", "Too many messages from you, try again later")


def client_blocked(reason: str) -> Reply:
    """In place of the greeting, to a blocked client (RFC 5321 §3.1 allows 554 there)."""
    return r(554, "5.7.1", f"Access denied: your address is blocked ({reason})")


def client_now_blocked(reason: str) -> Reply:
    """When a client's counter trips in the middle of its session."""
    return r(421, "4.7.0", f"Your address is now blocked ({reason}), closing connection")
