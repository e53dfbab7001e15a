"""Run a real ``mailferry serve`` as a subprocess for end-to-end tests.

Each daemon gets its own data dir and a loopback address/port, is configured through a real TOML
file (the same one a user would write), and is waited for by connecting to its port — never by
sleeping. ``kill9()`` simulates a crash.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailferry.queue.journal import scan


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None,
              *, implicit_tls: bool = False) -> None:
    """Wait until the port serves: its banner arrives (after a TLS handshake on smtps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                if implicit_tls:
                    # Only "is it serving": the certificate is checked by the tests themselves.
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    with ctx.wrap_socket(s) as t:
                        t.recv(512)
                    return
                s.recv(512)  # the banner: the server is really serving, not just bound
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s")


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers 200 (the daemon starts its HTTP server after the SMTP listeners)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before serving HTTP")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} not answering after {timeout}s")


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, object] | list[dict[str, object]]]
                 ) -> Path:
    """``{"server": {...}, "[[listener]]": {...} or [{...}, {...}]}`` → a TOML file."""
    lines = []
    for name, value in sections.items():
        for keys in value if isinstance(value, list) else [value]:
            lines.append(f"[[{name[2:-2]}]]" if name.startswith("[[") else f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
            lines.append("")
    path.write_text("\n".join(lines))
    return path


def mailferry(*args: str, check: bool = True, input: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    """Run the real command line (``python -m mailferry.cli ...``)."""
    return subprocess.run([sys.executable, "-m", "mailferry.cli", *args], capture_output=True,
                          text=True, check=check, input=input, timeout=60)


@dataclass
class TlsFiles:
    """A test CA (trustme) and a server certificate from it, as PEM files for [tls]."""

    ca: object  # trustme.CA
    certificate: Path
    key: Path
    ca_file: Path

    @classmethod
    def make(cls, folder: Path, *names: str) -> TlsFiles:
        import trustme

        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        files = cls(ca, folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
        files.issue(*(names or ("mx.example.test", "localhost", "127.0.0.1")))
        ca.cert_pem.write_to_path(str(files.ca_file))
        return files

    def issue(self, *names: str) -> None:
        """(Re)write the server's certificate and key (a renewal: same CA, new serial)."""
        cert = self.ca.issue_cert(*names)  # type: ignore[attr-defined]
        cert.private_key_pem.write_to_path(str(self.key))
        self.certificate.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))

    def client_context(self) -> ssl.SSLContext:
        """What a careful client uses: verifies the chain and the name against the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


@dataclass
class Daemon:
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    domains: tuple[str, ...] = ("example.test",)
    hostname: str = "mx.example.test"
    overrides: dict[str, dict[str, object]] = field(default_factory=dict)
    # TLS: [tls] from these files; and more listeners, by kind ("submission", "smtps"), on free
    # ports (self.ports[kind]). The first listener is always the "smtp" one on self.port.
    tls: TlsFiles | None = None
    kinds: tuple[str, ...] = ()
    http: bool = False  # serve the web UI / API on a free loopback port (http_url)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        self.ports = {"smtp": self.port, **{kind: free_port(self.host) for kind in self.kinds}}
        listeners: list[dict[str, object]] = [
            {"address": f"{self.host}:{port}", "kind": kind} for kind, port in self.ports.items()]
        # Off unless asked for: daemons of parallel tests must not all claim port 8025.
        self.http_port = free_port(self.host) if self.http else 0
        sections: dict[str, dict[str, object] | list[dict[str, object]]] = {
            "server": {"hostname": self.hostname, "data_dir": "data"},
            "[[listener]]": listeners,
            "domains": {"local": list(self.domains)},
            "policy": {"sender_domain_check": False, "client_rdns": "off"},
            "http": {"address": f"{self.host}:{self.http_port}" if self.http else ""},
        }
        if self.tls is not None:
            sections["tls"] = {"certificate": str(self.tls.certificate),
                               "key": str(self.tls.key)}
        for section, keys in self.overrides.items():
            sections.setdefault(section, {}).update(keys)  # type: ignore[union-attr]
        self.config = write_config(self.root / "mailferry.toml", sections)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.data / "log" / "smtp"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return mailferry(*args, "--config", str(self.config), check=check)

    def add_user(self, address: str, password: str | None = None) -> None:
        if password is None:
            self.cli("user", "add", address)
        else:
            mailferry("user", "add", address, "--password-stdin", "--config", str(self.config),
                      input=password + "\n")

    def start(self) -> Daemon:
        self.stderr = open(self.root / "stderr.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailferry.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=self.stderr, cwd=self.root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for kind, port in self.ports.items():
            wait_port(self.host, port, proc=self.proc, implicit_tls=kind == "smtps")
        if self.http:
            wait_http(self.http_url + "api/openapi.json", proc=self.proc)
        return self

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT/`` of the web UI (with ``http=True``)."""
        return f"http://{self.host}:{self.http_port}/"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    # --- looking at results ---------------------------------------------------------------------
    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.data / "mail" / domain / local.lower() / "Maildir"

    def messages(self, address: str) -> list[Path]:
        new = self.maildir(address) / "new"
        return sorted(new.iterdir()) if new.exists() else []

    def wait_messages(self, address: str, count: int, timeout: float = 20.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(address)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"{address}: {len(self.messages(address))} of {count} messages")

    def log_text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log_dir.glob("s*.log")))

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text() if self.log_dir.exists() else ""
            if needle in text:
                return text
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not in the transaction log")

    def wait_line(self, *parts: str, timeout: float = 10.0) -> str:
        """Wait for one log line containing every one of ``parts``; return that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text() if self.log_dir.exists() else ""
            for line in text.splitlines():
                if all(p in line for p in parts):
                    return line
            time.sleep(0.05)
        raise TimeoutError(f"no transaction log line with {parts!r}")

    def queued(self) -> list[str]:
        """Messages still in the queue: own files plus undone journal records (read-only)."""
        q = self.data / "queue"
        files = [p.name for p in (q / "msg").iterdir()] if (q / "msg").exists() else []
        journal = scan(q / "journal") if (q / "journal").exists() else {}
        return sorted({*files, *journal})


def lines_of(path: Path) -> Iterator[str]:
    yield from path.read_text().splitlines()
