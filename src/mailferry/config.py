"""Configuration: TOML file (tomllib) → frozen dataclasses.

Where: read once by ``cli``/``daemon`` at start (and again on HUP); everything else receives the
resulting ``Config``. Every key has a default (documented in docs/config.md); unknown keys are
errors; every error names the file, the line and the key (``FILE:LINE: section.key: what is
wrong``). Relative paths are resolved from the config file's folder (from the working directory for
the embedded default).

Must not: open sockets, create directories or touch the data directory — it only reads one file and
checks values, so ``mailferry config check`` is safe to run anywhere.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A bad configuration. ``str(err)`` is ``FILE:LINE: key: what is wrong``."""


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "mx.example.test"
    data_dir: Path = Path("var")


@dataclass(frozen=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 2525
    # "smtp": port 25 style, STARTTLS offered when [tls] is set; "submission": port 587 style,
    # STARTTLS and AUTH required before MAIL; "smtps": port 465 style, implicit TLS (RFC 8314).
    kind: str = "smtp"

    @property
    def implicit_tls(self) -> bool:
        return self.kind == "smtps"

    @property
    def requires_auth(self) -> bool:
        return self.kind != "smtp"


@dataclass(frozen=True)
class DomainsConfig:
    local: tuple[str, ...] = ("example.test",)


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    timeout: float = 5.0


@dataclass(frozen=True)
class LimitsConfig:
    message_size: int = 26_214_400
    recipients: int = 100
    line_length: int = 2048
    # RFC 5321 §4.5.3.2: 5 minutes for commands, 3 minutes between data blocks, 10 minutes
    # after end of data. idle_timeout is the per-command limit.
    idle_timeout: float = 300.0
    data_timeout: float = 600.0  # the whole DATA phase, however slowly the bytes trickle in
    sessions: int = 1000
    sessions_per_ip: int = 100
    backlog: int = 512


@dataclass(frozen=True)
class PolicyConfig:
    sender_domain_check: bool = True
    client_rdns: str = "log"  # "off" | "log" | "reject"
    long_text_lines: str = "reject"  # "reject" | "accept": lines over 998 octets in DATA
    # An authenticated client may only use its own address or an alias that reaches it as MAIL
    # FROM: a stolen password must not let it send as anybody in the domain.
    sender_must_match_auth: bool = True


@dataclass(frozen=True)
class TlsConfig:
    certificate: Path | None = None  # PEM, the chain after the server's own certificate
    key: Path | None = None  # PEM, unencrypted
    # Not a key of the file: the embedded default sets it, and `serve` then writes a
    # self-signed certificate at the paths above on its first start.
    self_signed: bool = False

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class AuthConfig:
    on_smtp: bool = False  # also offer AUTH (after STARTTLS) on "smtp" listeners
    # Remember a successful login for this long (seconds; 0 = never): the argon2 check is slow on
    # purpose and clients log in on every connection. Dovecot's auth_cache_ttl is 1 hour.
    login_cache_ttl: float = 3600.0


@dataclass(frozen=True)
class RelayConfig:
    networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    host: tuple[str, int] | None = None  # smart host: send all remote mail there, not via MX
    fallback: bool = False  # use the smart host only when direct delivery fails


@dataclass(frozen=True)
class QueueConfig:
    # Group commit: how long a batch waits for more messages before its fsync starts. 0 starts
    # at once; messages that finish meanwhile share the next fsync anyway (adaptive batching).
    commit_window_ms: float = 0.0
    delivery_workers: int = 20  # outbound deliveries in flight at once, in total
    # RFC 5321 §4.5.4.1: retry after at least 30 minutes is suggested; busy MTAs start sooner.
    retry_schedule: tuple[float, ...] = (300.0, 600.0, 1200.0, 2400.0)
    retry_every: float = 3600.0  # after the schedule is used up
    lifetime: float = 5 * 86400.0  # then the message bounces (RFC 5321 §4.5.4.1: 4-5 days)
    delay_warning: float = 4 * 3600.0  # send a "still trying" DSN after this; 0 = never


@dataclass(frozen=True)
class DeliveryConfig:
    port: int = 25
    source_address: str = ""  # bind outgoing connections to this local IP; "" = the OS picks
    max_mx_hosts: int = 5  # MX hosts tried per domain per attempt
    per_domain: int = 4  # deliveries in flight per destination domain
    connect_timeout: float = 30.0
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2: 5 minutes for most replies
    data_timeout: float = 600.0  # RFC 5321 §4.5.3.2: 10 minutes for the reply to end of data
    tls: str = "opportunistic"  # "opportunistic" (STARTTLS when offered) | "off"
    tls_ca_file: Path | None = None  # extra CA certificates to verify peers with


@dataclass(frozen=True)
class ProtectionConfig:
    """Intrusion prevention (inbound/guard.py). Counts are per client IP within ``window``
    seconds; 0 turns a rule off. The defaults only trip on clients no real sender resembles."""

    block_time: float = 3600.0  # how long a tripped client stays blocked
    window: float = 600.0  # the sliding window of every per-IP rule but the connection rate
    max_auth_failures: int = 10
    max_unknown_recipients: int = 50
    max_relay_attempts: int = 20
    max_rsets: int = 0
    max_oversize: int = 0
    max_connections_per_minute: int = 0  # its window is always 60 s
    max_pregreets: int = 1  # only with greeting_delay > 0: a client that talks first is a bot
    greeting_delay: float = 0.0  # seconds before the banner on "smtp" listeners; 0 = none
    max_messages_per_user: int = 0  # per window, per authenticated user
    max_messages_per_sender: int = 0  # per window, per MAIL FROM on submission/smtps listeners


@dataclass(frozen=True)
class LogConfig:
    dir: Path | None = None  # default: <data_dir>/log
    flush_interval: float = 0.5  # seconds; a crash loses at most this much transaction log


@dataclass(frozen=True)
class HttpConfig:
    # The web UI, JSON API and /metrics. None: no HTTP server. Loopback by default: nothing is
    # shown beyond this machine unless the admin says so (and then a login is required).
    address: tuple[str, int] | None = ("127.0.0.1", 8025)
    admins: tuple[str, ...] = ()  # mailferry users (with a password) who may log in
    history_days: int = 2  # days of transaction log (today included) the web UI reads

    @property
    def loopback(self) -> bool:
        return self.address is not None and ipaddress.ip_address(self.address[0]).is_loopback


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    protection: ProtectionConfig = field(default_factory=ProtectionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    source: Path | None = None  # the file it came from; None for the embedded default

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def log_dir(self) -> Path:
        return self.log.dir if self.log.dir is not None else self.server.data_dir / "log"


def default_config(base: Path | None = None) -> Config:
    """The embedded default: loopback ports 2525 (smtp), 2587 (submission) and 2465 (smtps),
    everything under ``./var``, with a self-signed certificate made on the first start."""
    base = base or Path.cwd()
    data = (base / "var").resolve()
    return Config(
        server=ServerConfig(data_dir=data),
        listeners=(ListenerConfig(port=2525, kind="smtp"),
                   ListenerConfig(port=2587, kind="submission"),
                   ListenerConfig(port=2465, kind="smtps")),
        tls=TlsConfig(certificate=data / "tls" / "cert.pem", key=data / "tls" / "key.pem",
                      self_signed=True),
    )


# --------------------------------------------------------------------------------------------------
# Locating keys. tomllib reports no positions for values, so we scan the text ourselves: track the
# current [table] / [[array]] header and remember the first line of every key path. The scan only
# has to be right for valid TOML: tomllib has accepted the text before we look.

_KEY_PART = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_KEY = rf"(?:{_KEY_PART})(?:\s*\.\s*(?:{_KEY_PART}))*"
_HEADER_RE = re.compile(rf"\s*(\[\[?)\s*({_KEY})\s*\]\]?")
_KEYVAL_RE = re.compile(rf"\s*({_KEY})\s*=")
_PART_RE = re.compile(_KEY_PART)

_KeyPath = tuple[str | int, ...]  # ints are array-of-tables indices: ("listener", 0, "kind")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in _PART_RE.findall(text))


class _Positions:
    """The first line of every table and key path in a TOML text."""

    def __init__(self, text: str) -> None:
        self.lines: dict[_KeyPath, int] = {}
        aot_counts: dict[_KeyPath, int] = {}  # [[name]] headers seen so far, per array path
        table: _KeyPath = ()
        depth = 0  # open [ or { of a value spanning lines: such lines hold no keys or headers
        multiline: str | None = None  # the closing delimiter of an open multi-line string
        for number, line in enumerate(text.splitlines(), 1):
            rest = line
            if depth == 0 and multiline is None:
                if m := _HEADER_RE.match(line):
                    parts = _split_key(m.group(2))
                    if m.group(1) == "[[":
                        array = (*self._resolve(parts[:-1], aot_counts), parts[-1])
                        aot_counts[array] = aot_counts.get(array, 0) + 1
                        table = (*array, aot_counts[array] - 1)
                        self.lines.setdefault(array, number)
                    else:
                        table = self._resolve(parts, aot_counts)
                    self.lines.setdefault(table, number)
                    rest = line[m.end():]
                elif m := _KEYVAL_RE.match(line):
                    parts = _split_key(m.group(1))
                    for i in range(1, len(parts) + 1):
                        self.lines.setdefault((*table, *parts[:i]), number)
                    rest = line[m.end():]
            depth, multiline = _scan_value(rest, depth, multiline)

    @staticmethod
    def _resolve(parts: tuple[str, ...], aot_counts: dict[_KeyPath, int]) -> _KeyPath:
        """Insert the current index after each array-of-tables name: [listener.x] → listener.N.x."""
        path: _KeyPath = ()
        for part in parts:
            path = (*path, part)
            if path in aot_counts:
                path = (*path, aot_counts[path] - 1)
        return path

    def line(self, path: _KeyPath) -> int:
        """The line of ``path``, else of its nearest enclosing table we found, else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def _scan_value(s: str, depth: int, multiline: str | None) -> tuple[int, str | None]:
    """Follow brackets and strings through one line, so text inside values is never a key."""
    i = 0
    while i < len(s):
        if multiline is not None:
            end = s.find(multiline, i)
            if end < 0:
                break
            i, multiline = end + 3, None
            continue
        c = s[i]
        if c == "#":
            break
        if s.startswith('"""', i) or s.startswith("'''", i):
            multiline, i = s[i:i + 3], i + 3
            continue
        if c in "\"'":
            i += 1
            while i < len(s) and s[i] != c:
                i += 2 if c == '"' and s[i] == "\\" else 1
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth, multiline


# --------------------------------------------------------------------------------------------------
# Value checkers: take the TOML value, return the typed value or raise _Bad with the reason.


class _Bad(Exception):
    """A value is wrong; the loader adds file, line and key to the message."""


Check = Callable[[Any], Any]


def _show(value: Any) -> str:
    """A value as it is written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_show(value)}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)}")
    return value


def _positive_int(value: Any) -> int:
    # bool is a subclass of int in Python: `recipients = true` must not quietly mean 1.
    if type(value) is not int or value <= 0:
        raise _Bad(f"must be a positive integer, got {_show(value)}")
    return value


def _count_or_off(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Bad(f"must be an integer >= 0 (0 turns the rule off), got {_show(value)}")
    return value


def _greeting_delay(value: Any) -> float:
    seconds = _number(zero_ok=True)(value)
    # RFC 5321 §4.5.3.2.1: a client waits 5 minutes for the greeting; a delay near that only
    # makes real senders give up. postscreen's default is 6 s.
    if seconds >= 300:
        raise _Bad(f"must be less than 300 seconds (RFC 5321 §4.5.3.2.1), got {_show(value)}")
    return seconds


def _line_length(value: Any) -> int:
    # RFC 5321 §4.5.3.1.4: a command line may be 512 octets (CRLF included); we must accept that.
    if _positive_int(value) < 512:
        raise _Bad(f"must be at least 512 (RFC 5321 §4.5.3.1.4), got {value}")
    return value


def _number(*, zero_ok: bool) -> Check:
    what = "a number >= 0" if zero_ok else "a positive number"

    def check(value: Any) -> float:
        # TOML has inf and nan: neither is a usable timeout or window.
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok)):
            raise _Bad(f"must be {what}, got {_show(value)}")
        return float(value)

    return check


def _choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            listed = ", ".join(_show(o) for o in options)
            raise _Bad(f"must be one of {listed}, got {_show(value)}")
        return str(value)

    return check


def _path(value: Any) -> Path:
    if not _string(value):
        raise _Bad("must be a path, got an empty string")
    return Path(value).expanduser()  # made absolute against the file's folder by the loader


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _domain(value: Any) -> str:
    if not _DOMAIN_RE.fullmatch(_string(value)) or len(value) > 254:
        raise _Bad(f"{_show(value)} is not a domain name")
    return value.rstrip(".").lower()


def _array(item: Check) -> Check:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Bad(f"must be an array, got {_show(value)}")
        return tuple(dict.fromkeys(item(v) for v in value))  # duplicates dropped, order kept

    return check


def _host_port(value: Any, default_port: int | None) -> tuple[str, int]:
    """``ip``, ``ip:port`` or ``[ipv6]:port`` → (ip, port). The port may be left out only when
    there is a default; a bare IPv6 address is then the host alone."""
    text = _string(value)
    shown = _show(text)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _Bad(f"{shown} is not [ipv6]:port")
        port: str | None = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") == 0 or default_port is not None:
        host, port = text, None
    else:
        raise _Bad(f"{shown}: write an IPv6 address in brackets, like [::1]:2525")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _Bad(f"{shown}: the host must be an IP address, like 127.0.0.1 or [::1]") from None
    if port is None:
        if default_port is None:
            raise _Bad(f"{shown} needs a port, like 127.0.0.1:2525")
        return str(ip), default_port
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise _Bad(f"{shown}: the port must be a number from 1 to 65535")
    return str(ip), int(port)


def _listen_address(value: Any) -> tuple[str, int]:
    return _host_port(value, None)


def _http_address(value: Any) -> tuple[str, int] | None:
    """Like a listener's address; "" turns the HTTP server off."""
    return None if _string(value) == "" else _host_port(value, None)


def _admin(value: Any) -> str:
    text = _string(value)
    local, at, domain = text.rpartition("@")
    if not at or not local or not _DOMAIN_RE.fullmatch(domain):
        raise _Bad(f"{_show(text)} is not a user address, like admin@example.test")
    return text.lower()


def _nameserver(value: Any) -> tuple[str, int]:
    return _host_port(value, 53)


def _kind(value: Any) -> str:
    return _choice("smtp", "submission", "smtps")(value)


def _network(value: Any) -> IPNetwork:
    text = _string(value)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        # "10.0.0.1/8" parses loosely, but quietly widening it to the /8 might open a relay.
        wide = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Bad(f"{_show(text)} is not a network, like 192.0.2.0/24 or 2001:db8::/32") from None
    raise _Bad(f'{_show(text)} has host bits set: did you mean "{wide}"?')


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _Bad(f"must be a port number from 1 to 65535, got {_show(value)}")
    return value


def _ip_or_empty(value: Any) -> str:
    text = _string(value)
    if text == "":
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Bad(f"{_show(text)} is not an IP address") from None


def _smart_host(value: Any) -> tuple[str, int] | None:
    """``host``, ``host:port``, ``[v6]:port`` or an IP; "" for none. A name is looked up (A/AAAA,
    not MX) at delivery time, as Postfix does with relayhost = [host]."""
    text = _string(value)
    if text == "":
        return None
    if text.startswith("[") or text.count(":") > 1:
        return _host_port(text, 25)
    host, sep, port = text.partition(":")
    if not _DOMAIN_RE.fullmatch(host) and not _is_ip(host):
        raise _Bad(f"{_show(text)} is not host[:port]")
    if sep and (not port.isdigit() or not 0 < int(port) < 65536):
        raise _Bad(f"{_show(text)}: the port must be a number from 1 to 65535")
    return host.rstrip(".").lower(), int(port) if sep else 25


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _show_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Section → key → checker. Keys are the dataclass field names, except listener.address.
_SECTIONS: dict[str, dict[str, Check]] = {
    "server": {"hostname": _domain, "data_dir": _path},
    "listener": {"address": _listen_address, "kind": _kind},
    "domains": {"local": _array(_domain)},
    "dns": {"nameservers": _array(_nameserver), "timeout": _number(zero_ok=False)},
    "limits": {
        "message_size": _positive_int,
        "recipients": _positive_int,
        "line_length": _line_length,
        "idle_timeout": _number(zero_ok=False),
        "data_timeout": _number(zero_ok=False),
        "sessions": _positive_int,
        "sessions_per_ip": _positive_int,
        "backlog": _positive_int,
    },
    "policy": {
        "sender_domain_check": _boolean,
        "client_rdns": _choice("off", "log", "reject"),
        "long_text_lines": _choice("reject", "accept"),
        "sender_must_match_auth": _boolean,
    },
    "relay": {"networks": _array(_network), "host": _smart_host, "fallback": _boolean},
    "queue": {
        "commit_window_ms": _number(zero_ok=True),
        "delivery_workers": _positive_int,
        "retry_schedule": _array(_number(zero_ok=False)),
        "retry_every": _number(zero_ok=False),
        "lifetime": _number(zero_ok=False),
        "delay_warning": _number(zero_ok=True),
    },
    "delivery": {
        "port": _port,
        "source_address": _ip_or_empty,
        "max_mx_hosts": _positive_int,
        "per_domain": _positive_int,
        "connect_timeout": _number(zero_ok=False),
        "command_timeout": _number(zero_ok=False),
        "data_timeout": _number(zero_ok=False),
        "tls": _choice("opportunistic", "off"),
        "tls_ca_file": _path,
    },
    "protection": {
        "block_time": _number(zero_ok=False),
        "window": _number(zero_ok=False),
        "max_auth_failures": _count_or_off,
        "max_unknown_recipients": _count_or_off,
        "max_relay_attempts": _count_or_off,
        "max_rsets": _count_or_off,
        "max_oversize": _count_or_off,
        "max_connections_per_minute": _count_or_off,
        "max_pregreets": _count_or_off,
        "greeting_delay": _greeting_delay,
        "max_messages_per_user": _count_or_off,
        "max_messages_per_sender": _count_or_off,
    },
    "log": {"dir": _path, "flush_interval": _number(zero_ok=False)},
    "tls": {"certificate": _path, "key": _path},
    "auth": {"on_smtp": _boolean, "login_cache_ttl": _number(zero_ok=True)},
    "http": {"address": _http_address, "admins": _array(_admin), "history_days": _positive_int},
}


# --------------------------------------------------------------------------------------------------
# The loader.


class _Loader:
    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.positions = _Positions(text)

    def error(self, path: _KeyPath, message: str) -> ConfigError:
        key = ".".join(p for p in path if isinstance(p, str))
        return ConfigError(f"{self.name}:{self.positions.line(path)}: {key}: {message}")

    def unknown(self, path: _KeyPath, known: list[str], what: str) -> ConfigError:
        close = difflib.get_close_matches(str(path[-1]), known, n=1)
        hint = f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(known)
        return self.error(path, f"unknown {what} ({hint})")

    def section(self, path: _KeyPath, table: Any) -> dict[str, Any]:
        """Check every key of one table; returns the typed values of the keys present."""
        checks = _SECTIONS[str(path[0])]
        if not isinstance(table, dict):
            raise self.error(path, f"must be a table, got {_show(table)}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in checks:
                raise self.unknown((*path, key), sorted(checks), "key")
            try:
                values[key] = checks[key](value)
            except _Bad as bad:
                raise self.error((*path, key), str(bad)) from None
        return values

    def listeners(self, tables: Any) -> tuple[ListenerConfig, ...]:
        if not isinstance(tables, list):
            raise self.error(("listener",), "must be an array of tables: write [[listener]]")
        if not tables:
            raise self.error(("listener",), "needs at least one [[listener]]")
        result: list[ListenerConfig] = []
        for index, table in enumerate(tables):
            values = self.section(("listener", index), table)
            host, port = values.pop("address", (ListenerConfig.host, ListenerConfig.port))
            if any((other.host, other.port) == (host, port) for other in result):
                where = ("listener", index, "address")
                raise self.error(where, f"{_show_host_port(host, port)} is listed twice")
            result.append(ListenerConfig(host=host, port=port, **values))
        return tuple(result)

    def config(self, doc: dict[str, Any], source: Path) -> Config:
        for name, value in doc.items():
            if name not in _SECTIONS:
                what = "section" if isinstance(value, dict | list) else "key"
                raise self.unknown((name,), sorted(_SECTIONS), what)
        v = {name: self.section((name,), doc.get(name, {})) for name in _SECTIONS
             if name != "listener"}
        # The default data_dir ("var") is relative too: next to the file, like any other.
        v["server"].setdefault("data_dir", ServerConfig.data_dir)
        for section, key in (("server", "data_dir"), ("log", "dir"), ("delivery", "tls_ca_file"),
                             ("tls", "certificate"), ("tls", "key")):
            if key in v[section]:
                # An absolute path stays as it is: `base / absolute` is `absolute`.
                v[section][key] = (source.parent / v[section][key]).resolve()
        tls = v["tls"]
        if ("certificate" in tls) != ("key" in tls):
            missing = "key" if "certificate" in tls else "certificate"
            raise self.error(("tls",), f"needs both certificate and key ({missing} is missing)")
        listeners = self.listeners(doc["listener"]) if "listener" in doc else Config.listeners
        if not tls:
            for index, listener in enumerate(listeners):
                if listener.kind != "smtp":
                    raise self.error(("listener", index, "kind"),
                                     f"{_show(listener.kind)} needs TLS: add a [tls] section with"
                                     " certificate and key (`mailferry tls selfsigned` makes one"
                                     " for a first run)")
        return Config(
            server=ServerConfig(**v["server"]),
            listeners=listeners,
            domains=DomainsConfig(**v["domains"]),
            dns=DnsConfig(**v["dns"]),
            limits=LimitsConfig(**v["limits"]),
            policy=PolicyConfig(**v["policy"]),
            relay=RelayConfig(**v["relay"]),
            queue=QueueConfig(**v["queue"]),
            delivery=DeliveryConfig(**v["delivery"]),
            protection=ProtectionConfig(**v["protection"]),
            log=LogConfig(**v["log"]),
            tls=TlsConfig(**tls),
            auth=AuthConfig(**v["auth"]),
            http=self.http(v["http"]),
            source=source,
        )

    def http(self, values: dict[str, Any]) -> HttpConfig:
        http = HttpConfig(**values)
        if http.address is not None and not http.loopback and not http.admins:
            # Beyond loopback the UI shows everyone's mail and can delete it: never without a
            # login. Loopback stays open, like Postfix's local tools (see docs/web.md).
            where = ("http", "address")
            raise self.error(where, f"{_show_host_port(*http.address)} is not a loopback "
                             "address: list who may log in with http.admins")
        return http


_TOML_POSITION_RE = re.compile(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", re.S)


def load_config(path: Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError naming file, line and key.

    ``Config.source`` is the file's absolute path (so a reload on HUP finds it from anywhere).
    """
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{name}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8 by definition
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: TOML syntax error: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib puts the position at the end of its message; editors and humans look in front.
        m = _TOML_POSITION_RE.fullmatch(str(err))
        if m is None:
            raise ConfigError(f"{name}:1: TOML syntax error: {err}") from None
        message, line, column = m.groups()
        if line is None:  # "at end of document"
            line, where = str(max(1, len(text.splitlines()))), "at end of file"
        else:
            where = f"column {column}"
        raise ConfigError(f"{name}:{line}: TOML syntax error: {message} ({where})") from None
    # abspath, not resolve(): a symlinked config file keeps its own folder as the base.
    return _Loader(name, text).config(doc, Path(os.path.abspath(path)))
