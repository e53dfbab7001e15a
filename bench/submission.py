"""Submission benchmark: mailferry against a private Postfix, TLS and AUTH for every message.

For each session count and each server (alternating, ``--repeat`` times), a fresh server is
started in a temporary folder with the same setup - STARTTLS required, AUTH PLAIN/LOGIN
required before mail is accepted, the same certificate and key, one login ``user@bench.test``
- and loaded with bench/tlsload.py: SESSIONS concurrent sessions submit N messages between
them, each over a new connection with a full TLS handshake and AUTH, as a mail client does.
Every message goes to the local mailbox ``user@bench.test`` (Maildir). It reports

* msgs/s       - N / the load client's wall time: every message got its 250 after end of data;
* delivered/s  - N / time from the start until the N-th message is a file in the Maildir;
* p50 / p99    - connect to the final 250, per message (what the submitting client waits);
* tls, ehlo, auth, data - medians of the steps (see bench/tlsload.py);
* mf/pf        - the ratio mailferry / Postfix of each.

Postfix: tests/support/postfix_submission.py (``smtpd_tls_security_level = encrypt``, Cyrus SASL
with a private sasldb). mailferry: ``[[listener]] kind = "submission"`` and a ``[tls]``
section, the login made with ``mailferry user add --password-stdin``. Both keep their normal
durability (queue fsynced before the 250, Maildir files fsynced): work on a real disk.
Only loopback; every run is bounded in messages and time.

Run as root (the Postfix master needs it); see bench/README.md::

    python bench/submission.py                       # 500 x 4 KiB, 1/10/50 sessions, both
    python bench/submission.py --only postfix --sessions 10 --messages 500 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import secrets
import shutil
import smtplib
import socket
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.accept import (  # noqa: E402
    DOMAIN,
    HOST,
    MailferryServer,
    PostfixServer,
    _cpu_model,
    _fmt,
    _jsonable,
    _ratio,
    count_messages,
    filesystem_of,
    wait_delivered,
)
from bench.tlsload import TLS_VERSIONS, percentile  # noqa: E402
from bench.tlsload import run as run_tlsload  # noqa: E402
from tests.support.postfix import free_port  # noqa: E402
from tests.support.postfix_submission import (  # noqa: E402
    SubmissionPostfix,
    make_certificate,
    submission_unavailable,
)

LOGIN = f"user@{DOMAIN}"  # authenticates, sends and receives: one mailbox on both servers
SERVERS = ("postfix", "mailferry")
MAX_MESSAGES = 200_000


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    ca: Path


# Servers -------------------------------------------------------------------------------------


class PostfixSubmissionServer(PostfixServer):
    """accept.py's Postfix, as a submission server (tests/support/postfix_submission.py)."""

    def __init__(self, root: Path, tls: Tls, password: str) -> None:
        self.port = free_port(HOST)
        self.instance = SubmissionPostfix(
            root=root, port=self.port, host=HOST, domain=DOMAIN, users=("user",),
            hostname="postfix.bench.test", cert_file=tls.cert, key_file=tls.key,
            logins={LOGIN: password},
        )


MAILFERRY_SUBMISSION_CONFIG = """\
# Written by bench/submission.py
[server]
hostname = "mx.bench.test"
data_dir = "{data_dir}"

[[listener]]
address = "{host}:{port}"
kind = "submission"

[tls]
certificate = "{cert}"
key = "{key}"

[domains]
local = ["{domain}"]

[policy]
sender_domain_check = false
client_rdns = "off"
"""


class MailferrySubmissionServer(MailferryServer):
    """``mailferry serve`` with a submission listener and the bench certificate."""

    def __init__(self, root: Path, command: list[str], tls: Tls, password: str,
                 argon2_params: tuple[int, int, int] | None = None) -> None:
        super().__init__(root, command)
        self.tls = tls
        self.password = password
        self.argon2_params = argon2_params

    def config_text(self) -> str:
        return MAILFERRY_SUBMISSION_CONFIG.format(
            data_dir=self.data_dir, host=HOST, port=self.port, cert=self.tls.cert,
            key=self.tls.key, domain=DOMAIN,
        )

    def add_users(self) -> None:
        self._cli("user", "add", LOGIN, "--password-stdin", input=self.password + "\n")
        if self.argon2_params is not None:
            self._swap_hash(*self.argon2_params)

    def _swap_hash(self, time_cost: int, memory_kib: int, lanes: int) -> None:
        """--argon2: replace the stored hash by one with cheaper parameters (a what-if).

        argon2 reads its parameters from the stored PHC string when it verifies, so the server
        then pays that cost per AUTH. This writes to mailferry's user database
        (``<data_dir>/users.db``, table ``users``) behind its back: diagnostics only.
        """
        import argon2

        digest = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                       parallelism=lanes).hash(self.password)
        with contextlib.closing(sqlite3.connect(self.data_dir / "users.db")) as db, db:
            changed = db.execute("UPDATE users SET password_hash = ? WHERE address = ?",
                                 (digest, LOGIN)).rowcount
        if changed != 1:
            raise RuntimeError(f"--argon2: {LOGIN} not found in {self.data_dir / 'users.db'}")


Server = PostfixSubmissionServer | MailferrySubmissionServer


def same_setup_problem(port: int, ca: Path) -> str | None:
    """Why the server on ``port`` is not a submission server as benchmarked, or None.

    It must refuse mail before STARTTLS, and refuse it after STARTTLS without AUTH (at MAIL or
    at RCPT): otherwise the two servers would not be doing the same work.
    """
    try:
        with smtplib.SMTP(HOST, port, timeout=30) as client:
            client.ehlo("check.bench.test")
            code, text = client.mail(LOGIN)
            if code // 100 == 2:
                return f"MAIL accepted before STARTTLS ({code} {text.decode(errors='replace')})"
        with smtplib.SMTP(HOST, port, timeout=30) as client:
            client.ehlo("check.bench.test")
            client.starttls(context=ssl.create_default_context(cafile=str(ca)))
            client.ehlo("check.bench.test")
            mail_code, _ = client.mail(LOGIN)
            rcpt_code = client.rcpt(LOGIN)[0] if mail_code // 100 == 2 else 0
            if mail_code // 100 == 2 and rcpt_code // 100 == 2:
                client.rset()
                return "MAIL and RCPT accepted after STARTTLS without AUTH"
    except smtplib.SMTPServerDisconnected:
        return None  # a server may hang up on a client that breaks its rules: also a refusal
    except (OSError, smtplib.SMTPException) as exc:
        return f"setup check failed: {type(exc).__name__}: {exc}"
    return None


# Measurements --------------------------------------------------------------------------------


@dataclass
class SubRun:
    server: str
    sessions: int
    messages: int
    size: int
    msgs_per_s: float = math.nan
    delivered_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    tls_ms: float = math.nan  # medians of the steps
    ehlo_ms: float = math.nan
    auth_ms: float = math.nan
    data_ms: float = math.nan
    tls_version: str = ""
    error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


METRICS = ("msgs_per_s", "delivered_per_s", "p50_ms", "p99_ms", "tls_ms", "ehlo_ms", "auth_ms",
           "data_ms")


def make_server(name: str, root: Path, args: argparse.Namespace) -> Server:
    if name == "postfix":
        return PostfixSubmissionServer(root, args.tls, args.password)
    return MailferrySubmissionServer(root, args.mailferry_command, args.tls, args.password,
                                     args.argon2)


def load(server: Server, args: argparse.Namespace, sessions: int) -> SubRun:
    run = SubRun(server.name, sessions, args.messages, args.size)
    started = time.monotonic()
    result = run_tlsload(
        HOST, server.port, messages=args.messages, sessions=sessions, size=args.size,
        username=LOGIN, password=args.password, recipient=LOGIN, auth=args.auth,
        cafile=str(args.tls.ca), tls_max=args.tls_max, total_timeout=args.timeout,
    )
    sent = time.monotonic()
    run.msgs_per_s = result.rate
    run.p50_ms = percentile(result.latency, 50) * 1000
    run.p99_ms = percentile(result.latency, 99) * 1000
    for name in ("tls", "ehlo", "auth", "data"):
        setattr(run, f"{name}_ms", percentile(getattr(result, name), 50) * 1000)
    run.tls_version = f"{result.tls_version} {result.cipher}".strip()
    run.extra["accepted"] = result.accepted
    run.extra["session_errors"] = result.session_errors
    if not result.ok:
        run.error = (f"tlsload: {result.accepted} accepted, {result.failed} failed"
                     f"{', timed out' if result.timed_out else ''}: {result.errors[:3]}")
    count, seen = wait_delivered(server.maildir(), args.messages, sent + args.deliver_timeout)
    if count >= args.messages:
        time.sleep(0.5)  # a duplicate delivery would show up by now
        count = count_messages(server.maildir())
    run.extra["delivered"] = count
    if count == args.messages:
        run.delivered_per_s = args.messages / (max(seen, sent) - started)
    elif not run.error:
        run.error = (f"{count} messages in the Maildir {args.deliver_timeout:g}s after the "
                     f"load ended, {args.messages} sent")
    return run


def measure(name: str, args: argparse.Namespace, sessions: int, workdir: Path) -> SubRun:
    root = Path(tempfile.mkdtemp(prefix=f"{name}-s{sessions}-", dir=workdir))
    server = make_server(name, root, args)
    try:
        server.start()
    except Exception as exc:  # a server that does not start is reported, not a crash
        with contextlib.suppress(Exception):
            server.stop()
        run = SubRun(name, sessions, args.messages, args.size)
        run.error = f"could not start: {str(exc)[:600]}"
        return run
    try:
        if isinstance(server, PostfixSubmissionServer) and "postfix_version" not in args.meta:
            args.meta["postfix_version"] = server.version()
        problem = same_setup_problem(server.port, args.tls.ca)
        if problem:
            run = SubRun(name, sessions, args.messages, args.size)
            run.error = f"not the benchmarked setup: {problem}"
        else:
            run = load(server, args, sessions)
        if run.error:
            run.extra["server_log"] = server.diagnostics()
        return run
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def aggregate(runs: list[SubRun]) -> list[SubRun]:
    """One SubRun per (server, sessions): the median of the repeats; any failure carries."""
    groups: dict[tuple[str, int], list[SubRun]] = {}
    for run in runs:
        groups.setdefault((run.server, run.sessions), []).append(run)
    out: list[SubRun] = []
    for (server, sessions), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        merged = SubRun(server, sessions, group[0].messages, group[0].size,
                        tls_version=group[0].tls_version)
        failed = [r for r in group if not r.ok]
        if failed:
            merged.error = f"{len(failed)} of {len(group)} repeats failed: {failed[0].error}"
        else:
            for metric in METRICS:
                setattr(merged, metric, statistics.median(getattr(r, metric) for r in group))
            merged.extra["repeats"] = len(group)
            merged.extra["msgs_per_s_all"] = [round(r.msgs_per_s, 1) for r in group]
        out.append(merged)
    return out


# Reporting -----------------------------------------------------------------------------------


def ratios(runs: list[SubRun]) -> list[dict[str, object]]:
    """mailferry / postfix of every metric, per session count."""
    out: list[dict[str, object]] = []
    for sessions in sorted({r.sessions for r in runs}):
        pf = next((r for r in runs if (r.server, r.sessions) == ("postfix", sessions)), None)
        mf = next((r for r in runs if (r.server, r.sessions) == ("mailferry", sessions)), None)
        row: dict[str, object] = {"sessions": sessions}
        for metric in METRICS:
            ok = pf is not None and mf is not None and pf.ok and mf.ok
            base = getattr(pf, metric) if ok else math.nan
            row[metric] = getattr(mf, metric) / base if ok and base > 0 else math.nan
        out.append(row)
    return out


def table(runs: list[SubRun], args: argparse.Namespace) -> str:
    tls = next((r.tls_version for r in runs if r.tls_version), "TLS")
    lines = [
        f"submission benchmark: {args.messages} messages x {args.size} body bytes, "
        f"STARTTLS ({tls}, {args.key_type} certificate) "
        f"+ AUTH {args.auth.upper()} on a new connection per message, Maildir delivery, fsync "
        f"on ({args.meta['cpus']} CPUs, {args.meta['filesystem']} at {args.meta['workdir']})",
        "msgs/s from bench/tlsload.py; p50/p99: connect -> final 250; tls/ehlo/auth/data: "
        "median ms of those steps" + (f"; medians of {args.repeat} runs" if args.repeat > 1
                                      else ""),
        f"argon2id verify with argon2-cffi's defaults (mailferry's password hashes): "
        f"{args.meta['argon2_verify_ms']:.1f} ms on this machine; Postfix's sasldb "
        "compares a stored plain-text password"
        + ("" if args.argon2 is None else
           "\nWHAT-IF: mailferry's stored hash replaced by argon2id t={},m={}KiB,p={} (--argon2),"
           " not what mailferry writes".format(*args.argon2)),
        "",
        f"{'sessions':>8}  {'server':<9}  {'msgs/s':>8}  {'delivered/s':>11}  {'p50 ms':>7}"
        f"  {'p99 ms':>7}  {'tls':>6}  {'ehlo':>6}  {'auth':>6}  {'data':>6}",
    ]
    ratio_rows = {row["sessions"]: row for row in ratios(runs)}
    errors: list[str] = []
    for sessions in sorted({r.sessions for r in runs}):
        for name in SERVERS:
            run = next((r for r in runs if (r.server, r.sessions) == (name, sessions)), None)
            if run is None:
                continue
            if run.error:
                errors.append(f"{name} {sessions} sessions: {run.error}")

            def cell(metric: str, digits: int = 1, r: SubRun = run) -> str:
                return _fmt(getattr(r, metric) if r.ok else math.nan, digits)

            lines.append(
                f"{sessions:>8}  {name:<9}  {cell('msgs_per_s'):>8}"
                f"  {cell('delivered_per_s'):>11}  {cell('p50_ms', 2):>7}  {cell('p99_ms', 2):>7}"
                f"  {cell('tls_ms', 2):>6}  {cell('ehlo_ms', 2):>6}  {cell('auth_ms', 2):>6}"
                f"  {cell('data_ms', 2):>6}"
            )
        row = ratio_rows.get(sessions)
        if row and any(_ratio(row[m]) != "-" for m in METRICS):
            lines.append(
                f"{'':>8}  {'mf/pf':<9}  {_ratio(row['msgs_per_s']):>8}"
                f"  {_ratio(row['delivered_per_s']):>11}  {_ratio(row['p50_ms']):>7}"
                f"  {_ratio(row['p99_ms']):>7}  {_ratio(row['tls_ms']):>6}"
                f"  {_ratio(row['ehlo_ms']):>6}  {_ratio(row['auth_ms']):>6}"
                f"  {_ratio(row['data_ms']):>6}"
            )
    if errors:
        lines += ["", "FAILED RUNS (shown as '-'):", *(f"  {e}" for e in errors)]
    return "\n".join(lines)


def argon2_verify_ms() -> float:
    """How long one argon2id verification takes here with argon2-cffi's default parameters."""
    try:
        import argon2
    except ImportError:
        return math.nan
    hasher = argon2.PasswordHasher()
    digest = hasher.hash("bench password")
    times = []
    for _ in range(3):
        began = time.perf_counter()
        hasher.verify(digest, "bench password")
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


# Command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Submission throughput (TLS + AUTH per message) of mailferry vs Postfix.",
    )
    parser.add_argument("--messages", "-m", type=int, default=500, help="messages per run")
    parser.add_argument("--sessions", "-s", default="1,10,50",
                        help="comma-separated session counts (default 1,10,50)")
    parser.add_argument("--size", "-l", type=int, default=4096, help="body bytes per message")
    parser.add_argument("--only", choices=SERVERS, help="run one server only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each measurement this many times (servers alternating) and "
                             "report the median (default 1)")
    parser.add_argument("--auth", choices=("plain", "login"), default="plain",
                        help="SASL mechanism (default plain)")
    parser.add_argument("--tls-max", choices=sorted(TLS_VERSIONS), default=None,
                        help="highest TLS version the client offers (default: 1.3)")
    parser.add_argument("--rsa", action="store_true",
                        help="an RSA-2048 certificate instead of ECDSA P-256")
    parser.add_argument("--argon2", default=None, metavar="T,M,P",
                        help="what-if: give mailferry's login an argon2id hash with these "
                             "parameters (passes, memory KiB, lanes), e.g. 1,1024,1, instead of "
                             "the one `mailferry user add` made")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the servers' temporary folders go (a real disk, not tmpfs)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="time limit for one load run, seconds (default 600)")
    parser.add_argument("--deliver-timeout", type=float, default=300.0,
                        help="how long to wait for the Maildir after the load, seconds")
    parser.add_argument("--mailferry-command", default=f"{sys.executable} -m mailferry.cli",
                        help="how to run the mailferry CLI (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.sessions = [int(s) for s in str(args.sessions).split(",") if s.strip()]
    except ValueError:
        parser.error("--sessions: comma-separated integers, like 1,10,50")
    if not args.sessions or min(args.sessions) < 1 or max(args.sessions) > 1000:
        parser.error("--sessions: each between 1 and 1000")
    if not 1 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages: between 1 and {MAX_MESSAGES}")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat: between 1 and 20")
    if not 0 < args.size <= 50_000_000:
        parser.error("--size: between 1 and 50000000")
    args.mailferry_command = args.mailferry_command.split()
    if args.argon2 is not None:
        try:
            t, m, p = (int(x) for x in args.argon2.split(","))
        except ValueError:
            parser.error("--argon2: three integers T,M,P, like 1,1024,1")
        if t < 1 or p < 1 or m < 8 * p:
            parser.error("--argon2: T >= 1, P >= 1, M >= 8*P (KiB)")
        args.argon2 = (t, m, p)
    args.servers = [args.only] if args.only else list(SERVERS)
    if "postfix" in args.servers:
        reason = submission_unavailable()
        if reason:
            parser.error(f"cannot run Postfix: {reason} (use --only mailferry)")
    args.key_type = "RSA-2048" if args.rsa else "ECDSA P-256"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.workdir or tempfile.gettempdir()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="mailferry-subbench-", dir=base))
    workdir.chmod(0o755)  # Postfix's daemons (user postfix) read the certificate in here
    fstype = filesystem_of(workdir)
    args.tls = Tls(*make_certificate(workdir / "tls", "127.0.0.1", "localhost", rsa=args.rsa))
    args.password = secrets.token_urlsafe(18)
    args.meta = {
        "messages": args.messages, "size": args.size, "sessions": args.sessions,
        "repeat": args.repeat, "auth": args.auth, "tls_max": args.tls_max or "1.3",
        "certificate": args.key_type, "cpus": os.cpu_count(),
        "cpu": _cpu_model(), "kernel": platform.release(), "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION, "workdir": str(workdir), "filesystem": fstype,
        "hostname": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_before": os.getloadavg(), "argon2_verify_ms": argon2_verify_ms(),
        "mailferry_argon2_override": args.argon2,
    }
    if fstype in ("tmpfs", "ramfs"):
        print(f"warning: {workdir} is on {fstype}: fsync costs nothing there, so the figures "
              "are not comparable with a disk (use --workdir)", file=sys.stderr)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {os.getloadavg()[0]:.1f}): "
              "the figures will be noisy", file=sys.stderr)
    runs: list[SubRun] = []
    try:
        for sessions, _rep, name in itertools.product(args.sessions, range(args.repeat),
                                                      args.servers):
            print(f"{name:<9} sessions={sessions:<3} ...", end="", file=sys.stderr, flush=True)
            run = measure(name, args, sessions, workdir)
            runs.append(run)
            progress = (f"FAILED: {run.error[:300]}" if run.error else
                        f"{_fmt(run.msgs_per_s)} msg/s, {_fmt(run.delivered_per_s)} dlv/s, "
                        f"p50 {_fmt(run.p50_ms, 2)} ms, p99 {_fmt(run.p99_ms, 2)} ms")
            print(" " + progress, file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = aggregate(runs)
    if args.json:
        payload = {
            "meta": args.meta,
            "results": [vars(r) for r in summary],
            "ratios": ratios(summary),
            "runs": [vars(r) for r in runs],
        }
        json.dump(_jsonable(payload), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(table(summary, args))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
