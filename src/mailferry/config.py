"""Configuration: TOML file (tomllib) → frozen dataclasses.

Every key has a default (documented in docs/config.md); unknown keys are errors; every error names
the file, the line and the key (``FILE:LINE: key: what is wrong``). Relative paths are resolved from
the config file's folder (from the working directory for the embedded default).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

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
    kind: str = "smtp"  # "submission" / "smtps" arrive with TLS (issue 5)


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


@dataclass(frozen=True)
class RelayConfig:
    networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


@dataclass(frozen=True)
class QueueConfig:
    # Group commit: how long the first finished message waits for others to share its fsync.
    commit_window_ms: float = 2.0
    delivery_workers: int = 4


@dataclass(frozen=True)
class LogConfig:
    dir: Path | None = None  # default: <data_dir>/log
    flush_interval: float = 0.5  # seconds; a crash loses at most this much transaction log


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
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file it came from; None for the embedded default

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def log_dir(self) -> Path:
        return self.log.dir if self.log.dir is not None else self.server.data_dir / "log"


def default_config(base: Path | None = None) -> Config:
    """The embedded default: loopback port 2525, everything under ``./var``."""
    base = base or Path.cwd()
    return Config(server=ServerConfig(data_dir=(base / "var").resolve()))


def load_config(path: Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError naming file, line and key."""
    raise NotImplementedError  # filled in by the config loader (see docs/config.md)
