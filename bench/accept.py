"""Accept-rate benchmark: mailferry against a private Postfix under the same smtp-source load.

For each session count and each server, a fresh server is started in a temporary folder and
loaded with Postfix's own load generator::

    smtp-source -c -l SIZE -m N -s SESSIONS -f sender@bench.test -t user@bench.test 127.0.0.1:PORT

(one message per connection, smtp-source's default; ``--connection reuse`` adds ``-d``: all of a
session's messages over one connection). It reports

* accepted/s  - N / smtp-source's wall time: every message got its "250" after end of data;
* delivered/s - N / time from smtp-source's start until the N-th message is in the Maildir
                (``new/`` and ``cur/`` counted; the run fails if they do not all arrive);
* p50 / p99   - latency of the final reply (end of data -> 250), from a second, separate run of
                bench/loadclient.py with the same count, size and sessions on a fresh server
                (smtp-source gives no per-message timings);
* the mailferry/postfix ratio of each.

Both servers keep their normal durability: Postfix fsyncs its queue file before replying 250 and
virtual(8) fsyncs each Maildir file; mailferry group-commits its queue with fsync before replying
and fsyncs Maildir files. Work on a real disk: a tmpfs makes every fsync free (a warning is
printed). Only loopback traffic; every run is bounded in messages and time.

Run as root (the Postfix master needs it); see bench/README.md::

    python bench/accept.py                          # 5000 x 4 KiB, 1/10/50 sessions, both
    python bench/accept.py --only postfix --messages 2000 --sessions 10
    python bench/accept.py --json > bench/out/accept.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.loadclient import run as run_loadclient  # noqa: E402
from tests.support.postfix import (  # noqa: E402
    PostfixInstance,
    find_program,
    free_port,
    postfix_unavailable,
    wait_for_banner,
)

HOST = "127.0.0.1"
DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"user@{DOMAIN}"
SERVERS = ("postfix", "mailferry")
MAX_MESSAGES = 1_000_000


# Servers -------------------------------------------------------------------------------------


class Server(Protocol):
    name: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def maildir(self) -> Path: ...

    def diagnostics(self) -> str: ...


class PostfixServer:
    """A private Postfix instance (tests/support/postfix.py) delivering to Maildir."""

    name = "postfix"

    def __init__(self, root: Path) -> None:
        self.port = free_port(HOST)
        self.instance = PostfixInstance(
            root=root, port=self.port, host=HOST, domain=DOMAIN, users=("user",),
            hostname="postfix.bench.test",
        )

    def start(self) -> None:
        self.instance.start()

    def stop(self) -> None:
        self.instance.stop()

    def maildir(self) -> Path:
        return self.instance.maildir("user")

    def diagnostics(self) -> str:
        return self.instance.maillog_tail(20)

    def version(self) -> str:
        return self.instance.version()


MAILFERRY_CONFIG = """\
# Written by bench/accept.py
[server]
hostname = "mx.bench.test"
data_dir = "{data_dir}"

[[listener]]
address = "{host}:{port}"

[domains]
local = ["{domain}"]

[policy]
sender_domain_check = false
client_rdns = "off"

[http]
address = ""  # no web UI: it would only compete for the CPU (and for port 8025)
"""


class MailferryServer:
    """``mailferry serve`` with a bench config in ``root``; the user is created beforehand."""

    name = "mailferry"

    def __init__(self, root: Path, command: list[str], start_timeout: float = 60.0) -> None:
        self.root = root
        self.port = free_port(HOST)
        self.command = command
        self.start_timeout = start_timeout
        self.config = root / "mailferry.toml"
        self.data_dir = root / "mf"
        self.log = root / "mailferry.out"
        self._proc: subprocess.Popen[bytes] | None = None

    def _cli(self, *args: str, timeout: float = 60.0, input: str | None = None) -> None:
        proc = subprocess.run(
            [*self.command, *args, "--config", str(self.config)],
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join([*self.command, *args])} exited {proc.returncode}:\n"
                f"{(proc.stdout + proc.stderr).strip()}"
            )

    def config_text(self) -> str:
        """The TOML config; bench/submission.py's subclass adds its listener kind and [tls]."""
        return MAILFERRY_CONFIG.format(data_dir=self.data_dir, host=HOST, port=self.port,
                                       domain=DOMAIN)

    def add_users(self) -> None:
        self._cli("user", "add", RECIPIENT)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text())
        self.add_users()
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                [*self.command, "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mailferry serve exited {self._proc.returncode}:\n"
                                   f"{self.diagnostics()}")
            try:
                wait_for_banner(HOST, self.port, timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mailferry did not answer on {HOST}:{self.port} within "
                        f"{self.start_timeout:g}s:\n{self.diagnostics()}"
                    ) from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def maildir(self) -> Path:
        return self.data_dir / "mail" / DOMAIN / "user" / "Maildir"

    def diagnostics(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return "(no output)"


def make_server(name: str, root: Path, args: argparse.Namespace) -> Server:
    if name == "postfix":
        return PostfixServer(root)
    return MailferryServer(root, args.mailferry_command)


# Measurements --------------------------------------------------------------------------------


def count_messages(maildir: Path) -> int:
    """Messages in ``new/`` plus ``cur/`` (a reader may have moved some)."""
    total = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(maildir / sub) as entries:
                total += sum(1 for entry in entries if not entry.name.startswith("."))
        except FileNotFoundError:
            pass
    return total


def wait_delivered(maildir: Path, expected: int, deadline: float) -> tuple[int, float]:
    """Poll until ``expected`` messages are in ``maildir`` or ``deadline`` (monotonic) passes.

    Returns (count, monotonic time the count was first seen).
    """
    while True:
        count = count_messages(maildir)
        now = time.monotonic()
        if count >= expected or now >= deadline:
            return count, now
        time.sleep(0.005)


@dataclass
class Run:
    server: str
    sessions: int
    connection: str  # "new": one message per connection; "reuse": one connection per session
    tool: str  # "smtp-source" or "loadclient"
    messages: int
    size: int
    send_seconds: float = math.nan
    deliver_seconds: float = math.nan
    delivered: int = 0
    accepted_per_s: float = math.nan
    delivered_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


def smtp_source_run(server: Server, args: argparse.Namespace, sessions: int,
                    connection: str) -> Run:
    run = Run(server.name, sessions, connection, "smtp-source", args.messages, args.size)
    argv = [
        args.smtp_source, "-c", "-l", str(args.size), "-m", str(args.messages),
        "-s", str(sessions), "-f", SENDER, "-t", RECIPIENT,
    ]
    if connection == "reuse":
        argv.append("-d")
    argv.append(f"{HOST}:{server.port}")
    run.extra["command"] = " ".join(argv)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        run.error = f"smtp-source did not finish within {args.timeout:g}s"
        return run
    sent = time.monotonic()
    run.send_seconds = sent - started
    # -c prints a counter, "\r"-separated, each time a DATA command completes.
    counters = [c for c in proc.stdout.decode(errors="replace").replace("\n", "\r").split("\r")
                if c.strip().isdigit()]
    completed = int(counters[-1]) if counters else 0
    run.extra["data_completed"] = completed
    if proc.returncode != 0 or completed != args.messages:
        run.error = (f"smtp-source exited {proc.returncode} after {completed} messages: "
                     f"{proc.stderr.decode(errors='replace').strip()[:300]}")
    run.accepted_per_s = args.messages / run.send_seconds
    _finish_delivery(run, server, started, sent, args)
    return run


def loadclient_run(server: Server, args: argparse.Namespace, sessions: int,
                   connection: str) -> Run:
    run = Run(server.name, sessions, connection, "loadclient", args.messages, args.size)
    started = time.monotonic()
    result = run_loadclient(
        HOST, server.port, messages=args.messages, sessions=sessions, size=args.size,
        sender=SENDER, recipient=RECIPIENT, per_connection=1 if connection == "new" else 0,
        total_timeout=args.timeout,
    )
    sent = time.monotonic()
    run.send_seconds = sent - started
    run.accepted_per_s = result.accepted / result.elapsed if result.elapsed else math.nan
    run.p50_ms = result.percentile(50) * 1000
    run.p99_ms = result.percentile(99) * 1000
    run.extra["max_ms"] = max(result.latencies, default=math.nan) * 1000
    run.extra["accepted"] = result.accepted
    if result.failed or result.timed_out or result.accepted != args.messages:
        run.error = (f"loadclient: {result.accepted} accepted, {result.failed} failed"
                     f"{', timed out' if result.timed_out else ''}: {result.errors[:3]}")
    _finish_delivery(run, server, started, sent, args)
    return run


def _finish_delivery(run: Run, server: Server, started: float, sent: float,
                     args: argparse.Namespace) -> None:
    """Wait (bounded) for every message in the Maildir; fill in the delivery figures."""
    count, seen = wait_delivered(server.maildir(), args.messages, sent + args.deliver_timeout)
    run.deliver_seconds = max(seen, sent) - started
    if count >= args.messages:
        time.sleep(0.5)  # a duplicate delivery would show up by now
        count = count_messages(server.maildir())
    run.delivered = count
    if count == args.messages:
        run.delivered_per_s = args.messages / run.deliver_seconds
        _check_sample(run, server.maildir(), args.size)
    elif count < args.messages:
        run.error = run.error or (f"only {count} of {args.messages} messages in the Maildir "
                                  f"{args.deliver_timeout:g}s after the load ended")
    else:
        run.error = run.error or f"{count} messages in the Maildir, {args.messages} sent"


def _check_sample(run: Run, maildir: Path, size: int) -> None:
    """A delivered message holds at least the body bytes sent (a cheap sanity check)."""
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError), os.scandir(maildir / sub) as entries:
            for entry in entries:
                if entry.stat().st_size < size:
                    run.error = f"{entry.path}: {entry.stat().st_size} bytes < {size}"
                return


def measure(name: str, args: argparse.Namespace, sessions: int, connection: str,
            tool: str, workdir: Path) -> Run:
    root = Path(tempfile.mkdtemp(prefix=f"{name}-s{sessions}-{tool}-", dir=workdir))
    server = make_server(name, root, args)
    try:
        server.start()
    except Exception as exc:  # a server that does not start is reported, not a crash
        with contextlib.suppress(Exception):
            server.stop()
        run = Run(name, sessions, connection, tool, args.messages, args.size)
        run.error = f"could not start: {exc}"
        return run
    try:
        if isinstance(server, PostfixServer) and "postfix_version" not in args.meta:
            args.meta["postfix_version"] = server.version()
        if tool == "smtp-source":
            run = smtp_source_run(server, args, sessions, connection)
        else:
            run = loadclient_run(server, args, sessions, connection)
        if run.error:
            run.extra["server_log"] = server.diagnostics()
        return run
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


# Reporting -----------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ratio(value: object) -> str:
    return "-" if not isinstance(value, float) or math.isnan(value) else f"{value:.2f}x"


def ratios(runs: list[Run]) -> list[dict[str, object]]:
    """mailferry / postfix for each (sessions, connection)."""
    out: list[dict[str, object]] = []
    keys = sorted({(r.sessions, r.connection) for r in runs})
    for sessions, connection in keys:
        def pick(server: str, tool: str, s: int = sessions, c: str = connection) -> Run | None:
            return next((r for r in runs if (r.server, r.tool, r.sessions, r.connection)
                         == (server, tool, s, c) and r.ok), None)

        row: dict[str, object] = {"sessions": sessions, "connection": connection}
        for tool, metric in (("smtp-source", "accepted_per_s"), ("smtp-source", "delivered_per_s"),
                             ("loadclient", "p50_ms"), ("loadclient", "p99_ms")):
            pf, mf = pick("postfix", tool), pick("mailferry", tool)
            if pf and mf and getattr(pf, metric) > 0:
                row[metric] = getattr(mf, metric) / getattr(pf, metric)
            else:
                row[metric] = math.nan
        out.append(row)
    return out


def table(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        f"accept-rate benchmark: {args.messages} messages x {args.size} body bytes, "
        f"{HOST}, Maildir delivery, fsync on ({args.meta['cpus']} CPUs, "
        f"{args.meta['filesystem']} at {args.meta['workdir']})",
        "accepted/s and delivered/s from smtp-source; latency of the final reply (end of data "
        "-> 250) and lc msg/s from bench/loadclient.py"
        + (f"; medians of {args.repeat} runs" if args.repeat > 1 else ""),
        "",
        f"{'sessions':>8}  {'conn':<5}  {'server':<9}  {'accepted/s':>10}  {'delivered/s':>11}"
        f"  {'p50 ms':>7}  {'p99 ms':>7}  {'lc msg/s':>8}",
    ]
    keys = sorted({(r.sessions, r.connection) for r in runs})
    ratio_rows = {(row["sessions"], row["connection"]): row for row in ratios(runs)}
    errors: list[str] = []
    for sessions, connection in keys:
        for name in SERVERS:
            src = next((r for r in runs if (r.server, r.tool, r.sessions, r.connection)
                        == (name, "smtp-source", sessions, connection)), None)
            lat = next((r for r in runs if (r.server, r.tool, r.sessions, r.connection)
                        == (name, "loadclient", sessions, connection)), None)
            if src is None and lat is None:
                continue
            for r in (src, lat):
                if r is not None and r.error:
                    errors.append(f"{name} {sessions} sessions {r.tool}: {r.error}")
            nan = math.nan
            lines.append(
                f"{sessions:>8}  {connection:<5}  {name:<9}"
                f"  {_fmt(src.accepted_per_s if src and src.ok else nan):>10}"
                f"  {_fmt(src.delivered_per_s if src and src.ok else nan):>11}"
                f"  {_fmt(lat.p50_ms if lat and lat.ok else nan, 2):>7}"
                f"  {_fmt(lat.p99_ms if lat and lat.ok else nan, 2):>7}"
                f"  {_fmt(lat.accepted_per_s if lat and lat.ok else nan):>8}"
            )
        row = ratio_rows.get((sessions, connection))
        if row and any(_ratio(v) != "-" for v in row.values()):
            lines.append(
                f"{'':>8}  {'':<5}  {'mf/pf':<9}  {_ratio(row['accepted_per_s']):>10}"
                f"  {_ratio(row['delivered_per_s']):>11}  {_ratio(row['p50_ms']):>7}"
                f"  {_ratio(row['p99_ms']):>7}"
            )
    if errors:
        lines += ["", "FAILED RUNS (shown as '-'):", *(f"  {e}" for e in errors)]
    return "\n".join(lines)


def filesystem_of(path: Path) -> str:
    """The file-system type holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


# Command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Accept rate of mailferry vs a private Postfix (smtp-source load).",
    )
    parser.add_argument("--messages", "-m", type=int, default=5000, help="messages per run")
    parser.add_argument("--sessions", "-s", default="1,10,50",
                        help="comma-separated session counts (default 1,10,50)")
    parser.add_argument("--size", "-l", type=int, default=4096, help="body bytes per message")
    parser.add_argument("--only", choices=SERVERS, help="run one server only")
    parser.add_argument("--connection", choices=("new", "reuse", "both"), default="new",
                        help="new: one message per connection (smtp-source default, default "
                             "here); reuse: all of a session's messages on one connection (-d)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each measurement this many times (servers alternating) and "
                             "report the median (default 1)")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the loadclient latency runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the servers' temporary folders go (default: the system "
                             "temp folder; must be a real disk, not tmpfs)")
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
    args.smtp_source = find_program("smtp-source")
    if args.smtp_source is None:
        parser.error("smtp-source not found: install Debian's postfix package")
    args.servers = [args.only] if args.only else list(SERVERS)
    if "postfix" in args.servers:
        reason = postfix_unavailable()
        if reason:
            parser.error(f"cannot run Postfix: {reason} (use --only mailferry)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.workdir or tempfile.gettempdir()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="mailferry-bench-", dir=base))
    fstype = filesystem_of(workdir)
    args.meta = {
        "messages": args.messages, "size": args.size, "sessions": args.sessions,
        "repeat": args.repeat, "cpus": os.cpu_count(), "cpu": _cpu_model(),
        "kernel": platform.release(), "python": platform.python_version(),
        "workdir": str(workdir), "filesystem": fstype, "hostname": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_before": os.getloadavg(),
    }
    if fstype in ("tmpfs", "ramfs"):
        print(f"warning: {workdir} is on {fstype}: fsync costs nothing there, so the figures "
              "are not comparable with a disk (use --workdir)", file=sys.stderr)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {os.getloadavg()[0]:.1f}): "
              "the figures will be noisy", file=sys.stderr)
    connections = ["new", "reuse"] if args.connection == "both" else [args.connection]
    tools = ["smtp-source"] + ([] if args.no_latency else ["loadclient"])
    runs: list[Run] = []
    try:
        for connection, sessions, tool, _rep, name in itertools.product(
            connections, args.sessions, tools, range(args.repeat), args.servers
        ):
            print(f"{name:<9} sessions={sessions:<3} conn={connection:<5} {tool:<11} ...",
                  end="", file=sys.stderr, flush=True)
            run = measure(name, args, sessions, connection, tool, workdir)
            runs.append(run)
            print(" " + _progress(run), file=sys.stderr, flush=True)
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


def _jsonable(value: object) -> object:
    """NaN (not measured) becomes null, other floats are rounded, containers are walked."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _progress(run: Run) -> str:
    if not run.ok:
        return f"FAILED: {run.error[:200]}"
    text = f"{_fmt(run.accepted_per_s)} acc/s, {_fmt(run.delivered_per_s)} dlv/s"
    if run.tool == "loadclient":
        text += f", p50 {_fmt(run.p50_ms, 2)} ms, p99 {_fmt(run.p99_ms, 2)} ms"
    return text


def aggregate(runs: list[Run]) -> list[Run]:
    """One Run per (server, sessions, connection, tool): the median of the repeats.

    If any repeat failed, the aggregate carries that failure.
    """
    groups: dict[tuple[str, int, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.server, run.sessions, run.connection, run.tool), []).append(run)
    out: list[Run] = []
    for (server, sessions, connection, tool), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        merged = Run(server, sessions, connection, tool, group[0].messages, group[0].size)
        failed = [r for r in group if not r.ok]
        if failed:
            merged.error = f"{len(failed)} of {len(group)} repeats failed: {failed[0].error}"
        else:
            for name in ("send_seconds", "deliver_seconds", "accepted_per_s",
                         "delivered_per_s", "p50_ms", "p99_ms"):
                setattr(merged, name, statistics.median(getattr(r, name) for r in group))
            merged.delivered = min(r.delivered for r in group)
            merged.extra["repeats"] = len(group)
            merged.extra["accepted_per_s_all"] = [round(r.accepted_per_s, 1) for r in group]
        out.append(merged)
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
