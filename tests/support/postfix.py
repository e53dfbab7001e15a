"""Private Postfix instances and smtp-sink servers for tests and benchmarks.

``PostfixInstance`` builds a complete, private Postfix in a directory of its own: its own
``config_directory`` (main.cf and master.cf written from scratch), ``queue_directory``,
``data_directory`` and ``maillog_file``, one smtpd listening on a loopback ``host:port``, and
virtual(8) delivery to Maildir under ``<root>/mail/<domain>/<user>/Maildir/``. The system's own
Postfix (/etc/postfix, /var/spool/postfix) is never read from, written to, started or stopped:
every ``postfix`` command gets ``-c <root>/etc``. Postfix's durability is left as shipped:
cleanup(8) fsyncs the queue file before smtpd replies 250 and virtual(8) fsyncs each Maildir file
before renaming it into ``new/``.

``SmtpSink`` runs Postfix's ``smtp-sink`` on a loopback port and (optionally) dumps every message it
receives into a directory: a foreign receiving server for delivery tests.

Both need Postfix's programs (Debian package ``postfix``); ``PostfixInstance`` also needs root,
because the Postfix master runs as root and its daemons switch to the ``postfix`` user. Use
``postfix_unavailable()`` / ``smtp_sink_unavailable()`` to skip when they cannot run.

Pitfalls handled here (found on Debian's Postfix 3.7):

* Postfix writes its diagnostics to stderr only when stderr is a terminal; otherwise to syslog,
  which may not exist (no /dev/log in containers) - a failing ``postfix start`` then exits 1
  silently. The ``postfix`` commands are run with stdout/stderr on a pseudo-terminal so that
  errors can be reported.
* ``maillog_file`` must start with one of ``maillog_file_prefixes`` (default ``/var, /dev/stdout``),
  so main.cf sets ``maillog_file_prefixes`` to the instance's root; master.cf needs the
  ``postlog`` (postlogd) service for ``maillog_file`` to work.
* virtual(8) refuses uid 0 (``virtual_minimum_uid``) and writes with the mailbox owner's
  privileges using absolute paths, so every folder above the mail base must be searchable by
  that user: pytest's ``tmp_path`` parents are mode 0700. ``start()`` adds the "others may
  search" bit (``o+x``, not read) to the ancestors that lack it.
* ``data_directory`` must belong to ``mail_owner`` (``postfix``); the queue directory is created
  and given its permissions by ``postfix start`` itself (post-install create-missing).
* ``alias_maps`` defaults to ``hash:/etc/aliases, nis:mail.aliases``: emptied, otherwise smtpd
  logs an error per session on a machine without /etc/aliases.db.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pty
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

POSTFIX = "postfix"
SMTP_SINK = "smtp-sink"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class PostfixError(RuntimeError):
    """A Postfix command failed, or the instance did not come up in time."""


def find_program(name: str) -> str | None:
    """``name``'s path on PATH or in the sbin folders (often not on a normal user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def postfix_unavailable() -> str | None:
    """Why a private Postfix cannot run here (a pytest skip reason), or None if it can."""
    if find_program(POSTFIX) is None:
        return "Postfix is not installed (Debian package 'postfix')"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its master process runs as root)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the 'postfix' user or 'postdrop' group is missing"
    return None


def smtp_sink_unavailable() -> str | None:
    """Why smtp-sink cannot run here (a pytest skip reason), or None if it can."""
    if find_program(SMTP_SINK) is None:
        return "smtp-sink is not installed (Debian package 'postfix')"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_banner(host: str, port: int, timeout: float = 30.0) -> str:
    """Wait until an SMTP server on host:port answers with a 220 greeting; return the greeting.

    Says QUIT politely, so a server that counts sessions sees a normal one.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2.0) as sock:
                greeting = _read_reply(sock)
                if greeting.startswith("220"):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        _read_reply(sock)
                    return greeting
                last_error = PostfixError(f"unexpected greeting {greeting!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"no SMTP greeting on {host}:{port} within {timeout:g}s: {last_error}")


def _read_reply(sock: socket.socket) -> str:
    """Read one (possibly multi-line) SMTP reply."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        complete = lines[:-1]
        if complete and len(complete[-1]) >= 4 and complete[-1][3:4] == b" ":
            return data.decode("utf-8", "replace").strip()


def count_maildir(maildir: Path) -> int:
    """How many messages are in ``maildir/new`` (0 if it does not exist yet)."""
    try:
        with os.scandir(maildir / "new") as entries:
            return sum(1 for entry in entries if not entry.name.startswith("."))
    except FileNotFoundError:
        return 0


def wait_for_maildir(maildir: Path, count: int, timeout: float = 30.0) -> list[Path]:
    """Wait until ``maildir/new`` holds at least ``count`` messages; return their paths."""
    deadline = time.monotonic() + timeout
    while True:
        if count_maildir(maildir) >= count:
            return sorted(p for p in (maildir / "new").iterdir() if not p.name.startswith("."))
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{maildir}/new holds {count_maildir(maildir)} messages, expected {count}"
                f" within {timeout:g}s"
            )
        time.sleep(0.02)


def _make_searchable(path: Path) -> None:
    """Give every folder from ``path`` up to ``/`` the others-may-search bit (o+x) if missing."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _run_on_pty(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` with stdout/stderr on a pseudo-terminal; return (exit status, output).

    Postfix programs only print their warnings and fatal errors when stderr is a terminal.
    Daemons started by the command may keep the terminal open, so the output is read without
    waiting for end-of-file.
    """
    master_fd, slave_fd = pty.openpty()
    chunks: list[bytes] = []
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=slave_fd, stderr=slave_fd, env=env,
            start_new_session=True,
        )
        os.close(slave_fd)
        slave_fd = -1
        os.set_blocking(master_fd, False)
        deadline = time.monotonic() + timeout
        while True:
            _drain(master_fd, chunks)
            status = proc.poll()
            if status is not None:
                break
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait(5)
                raise PostfixError(f"{' '.join(argv)}: no exit within {timeout:g}s")
            time.sleep(0.02)
        _drain(master_fd, chunks)
    finally:
        if slave_fd >= 0:
            os.close(slave_fd)
        os.close(master_fd)
    return status, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").strip()


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: every writer closed the terminal
            if exc.errno == errno.EIO:
                return
            raise
        if not chunk:
            return
        chunks.append(chunk)


# master.cf: only the services a receive-and-deliver-locally instance needs, none chrooted.
# The listener line is prepended by _master_cf(). Columns: service type private unpriv chroot
# wakeup maxproc command.
_MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class PostfixInstance:
    """A private Postfix in ``root``: SMTP on ``host:port``, Maildir delivery for ``domain``.

    Layout under ``root``: ``etc/`` (main.cf, master.cf, vmailbox), ``spool/`` (queue),
    ``data/``, ``mail/<domain>/<user>/Maildir/``, ``maillog``. Use as a context manager, or call
    ``start()`` and ``stop()``. ``extra_main_cf`` adds or overrides main.cf parameters.
    """

    root: Path
    port: int
    host: str = "127.0.0.1"
    domain: str = "bench.test"
    users: tuple[str, ...] = ("user",)
    hostname: str = "postfix.bench.test"
    mailbox_owner: str = "nobody"  # virtual(8) writes Maildir files as this user
    extra_main_cf: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self._started = False

    # Paths ---------------------------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "spool"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def maildir(self, user: str | None = None) -> Path:
        """The Maildir of ``user`` (default: the first user)."""
        return self.mail_dir / self.domain / (user or self.users[0]) / "Maildir"

    def address(self, user: str | None = None) -> str:
        return f"{user or self.users[0]}@{self.domain}"

    # Configuration ---------------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters, in order."""
        owner = pwd.getpwnam(self.mailbox_owner)
        listen = f"[{self.host}]" if ":" in self.host else self.host
        params = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file_prefixes": str(self.root),
            "maillog_file": str(self.maillog),
            "myhostname": self.hostname,
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv6" if ":" in self.host else "ipv4",
            "mynetworks": f"{listen}/128" if ":" in self.host else "127.0.0.0/8",
            # No local(8) delivery at all: every address we accept is a virtual mailbox.
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mail_dir),
            # texthash: read directly, no postmap / .db file needed.
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "virtual_minimum_uid": "1",
            # No DNS: no reverse lookup of clients, no MX lookups.
            "smtpd_peername_lookup": "no",
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_client_restrictions": "",
            "smtpd_helo_restrictions": "",
            "smtpd_sender_restrictions": "",
            # Generous limits: the load generator is a single loopback client.
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "in_flow_delay": "0",
            "readme_directory": "no",
            "html_directory": "no",
        }
        params.update(self.extra_main_cf)
        return params

    def master_cf(self) -> str:
        listen = f"[{self.host}]" if ":" in self.host else self.host
        return f"{listen}:{self.port} inet n - n - - smtpd\n" + _MASTER_CF_SERVICES

    def write_config(self) -> None:
        """Create the folders and write main.cf, master.cf and the mailbox map."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            folder.mkdir(exist_ok=True)
        for folder in (self.root, self.config_dir, self.queue_dir):
            folder.chmod(0o755)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.data_dir.chmod(0o700)
        owner = pwd.getpwnam(self.mailbox_owner)
        os.chown(self.mail_dir, owner.pw_uid, owner.pw_gid)
        self.mail_dir.chmod(0o755)
        _make_searchable(self.root)

        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(
            "# Written by tests/support/postfix.py: a private instance, not the system's.\n" + main
        )
        (self.config_dir / "master.cf").write_text(self.master_cf())
        (self.config_dir / "vmailbox").write_text(
            "".join(f"{user}@{self.domain} {self.domain}/{user}/Maildir/\n" for user in self.users)
        )

    # Running -------------------------------------------------------------------------------

    def postfix(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``postfix -c <config_dir> ARGS...``; return its output (raise if it fails)."""
        program = find_program(POSTFIX)
        if program is None:
            raise PostfixError("postfix is not installed")
        argv = [program, "-c", str(self.config_dir), *args]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C",
            "MAIL_CONFIG": str(self.config_dir),
        }
        status, output = _run_on_pty(argv, env, timeout)
        if check and status != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited {status}: {output}\n{self.maillog_tail()}"
            )
        return output

    def version(self) -> str:
        """Postfix's ``mail_version`` (needs ``write_config()`` or ``start()`` first)."""
        program = find_program("postconf")
        if program is None:
            return "unknown"
        proc = subprocess.run(
            [program, "-c", str(self.config_dir), "-h", "mail_version"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        return proc.stdout.strip() or "unknown"

    def maillog_tail(self, lines: int = 30) -> str:
        try:
            text = self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return "(no maillog)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> PostfixInstance:
        """Write the configuration, start the instance and wait for its SMTP greeting."""
        reason = postfix_unavailable()
        if reason:
            raise PostfixError(reason)
        self.write_config()
        self.postfix("start")
        self._started = True
        try:
            wait_for_banner(self.host, self.port, self.start_timeout)
        except TimeoutError as exc:
            self.stop()
            raise PostfixError(f"{exc}\n{self.maillog_tail()}") from exc
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the instance; kill any of its processes that are still there after ``timeout``."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(PostfixError):
            self.postfix("stop", timeout=timeout, check=False)
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[int]:
        """PIDs of the live processes of this instance.

        The master and every daemon it spawns carry ``MAIL_CONFIG=<config_dir>`` in their
        environment, which tells them apart from any other Postfix on the machine.
        """
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class SmtpSink:
    """Postfix's ``smtp-sink`` on ``host:port``: accepts every message and throws it away, or,
    with ``dump_dir``, writes each one to a file of its own there (see ``messages()``).

    ``options`` are extra smtp-sink flags (e.g. ``["-r", "RCPT"]`` to soft-reject recipients).
    When run as root, smtp-sink must drop privileges (``-u``): it runs as ``user`` then, and the
    dump folder is handed to that user.
    """

    port: int
    host: str = "127.0.0.1"
    dump_dir: Path | None = None
    hostname: str = "sink.bench.test"
    options: list[str] = field(default_factory=list)
    user: str = "nobody"
    backlog: int = 128
    start_timeout: float = 10.0

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        program = find_program(SMTP_SINK)
        if program is None:
            raise PostfixError("smtp-sink is not installed")
        argv = [program, "-h", self.hostname]
        if os.geteuid() == 0:
            argv += ["-u", self.user]
        if self.dump_dir is not None:
            # A strftime template: "%" must be doubled; a random hex suffix is appended.
            template = str(self.dump_dir).replace("%", "%%") + "/%Y%m%d%H%M%S."
            argv += ["-d", template]
        listen = f"[{self.host}]" if ":" in self.host else self.host
        return [*argv, *self.options, f"{listen}:{self.port}", str(self.backlog)]

    def start(self) -> SmtpSink:
        if self.dump_dir is not None:
            self.dump_dir = Path(self.dump_dir).resolve()
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                owner = pwd.getpwnam(self.user)
                os.chown(self.dump_dir, owner.pw_uid, owner.pw_gid)
                _make_searchable(self.dump_dir)
        self._proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_banner(self.host, self.port, self.start_timeout)
        except TimeoutError as exc:
            output = self.stop()
            raise PostfixError(f"smtp-sink did not start: {exc}\n{output}") from exc
        return self

    def stop(self) -> str:
        """Stop smtp-sink; return what it printed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
        return out.decode("utf-8", "replace")

    def messages(self) -> list[Path]:
        """The dumped messages, oldest first (needs ``dump_dir``)."""
        if self.dump_dir is None:
            raise ValueError("SmtpSink was started without dump_dir")
        return sorted(self.dump_dir.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Path]:
        """Wait until at least ``count`` messages are dumped and complete; return them."""
        deadline = time.monotonic() + timeout
        while True:
            done = [p for p in self.messages() if _dump_complete(p)]
            if len(done) >= count:
                return done
            if time.monotonic() >= deadline:
                raise TimeoutError(f"smtp-sink dumped {len(done)} messages, expected {count}")
            time.sleep(0.02)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _dump_complete(path: Path) -> bool:
    """A dump file ends with the message followed by an empty line once the transaction ends."""
    try:
        return path.read_bytes().endswith(b"\n\n")
    except OSError:
        return False


@contextlib.contextmanager
def private_postfix(root: Path, **kwargs: object) -> Iterator[PostfixInstance]:
    """``with private_postfix(tmp_path, port=free_port()) as pf:`` - start, yield, stop."""
    instance = PostfixInstance(root=root, **kwargs)  # type: ignore[arg-type]
    with instance:
        yield instance
