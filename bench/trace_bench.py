"""Benchmark of the tracker: ``mailferry trace --json`` and ``mailferry report`` on a big log.

Generates a realistic transaction log (24 interleaved served and delivery sessions at a time,
refused recipients, rejected senders, greylisting deferrals and their retries, bounces) of at
least 1,000,000 lines into a temporary directory, then measures, each in a fresh process run as
a user runs it (``python -m mailferry.tracker.cli …``, output to /dev/null): ``grep -c`` over
the file, ``mailferry report`` and ``mailferry trace --json``: wall time, CPU time (user +
system of that child, from os.wait4), lines/s by each, and peak resident memory. Prints a table
(or JSON).

    python bench/trace_bench.py [--lines 1000000] [--keep DIR | --log FILE] [--repeat N]
                                [--only report --only report-records] [--json]

``--only report-records`` also measures the report computed from the records (reconstruct →
records → report.Report.add: what ``report`` did before tally.py, and still does with a filter).

The machine is shared (2 vCPUs, other builds running): CPU time is the figure to compare, and
``--repeat`` keeps the fastest of N alternating runs; the empty-loop time printed with the
table says how loaded the machine was.

It must not: touch the repository's files (everything goes to a temporary directory) or need
the network. Targets (issue 4): report ≥ 500,000 lines/s; trace memory bounded (flat in size).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from mailferry.txlog import format as fmt

OUR_IP = "198.51.100.5"
HOST = "mail.example.com"
USERS = [f"user{i}" for i in range(400)]
DOMAINS = ["example.org", "example.net", "example.edu", "mail.example", "corp.example"]


def _served(rng: random.Random, sid: str, msgid: str, t: int, relay: list[str]) -> list:
    """The lines of one served session; appends the recipients to relay to ``relay``."""
    peer = f"192.0.2.{rng.randrange(1, 250)}"
    sender = f"{rng.choice(USERS)}@{rng.choice(DOMAINS)}"
    lines = [(peer, sid, "Connected, local IP=" + OUR_IP),
             (peer, sid, f">>> 220 {HOST} ESMTP mailferry; Sat, 28 Nov 2026 10:00:00 +0000"),
             (peer, sid, "<<< EHLO client.example.org"),
             (peer, sid, f">>> 250-{HOST} Hello client.example.org [{peer}]"),
             (peer, sid, ">>> 250-SIZE 26214400"), (peer, sid, ">>> 250-PIPELINING"),
             (peer, sid, ">>> 250-8BITMIME"), (peer, sid, ">>> 250 ENHANCEDSTATUSCODES"),
             (peer, sid, f"Client {peer} reverse DNS: client.example.org")]
    if rng.random() < 0.08:  # spam from a domain that does not exist
        lines += [(peer, sid, f"<<< MAIL FROM:<{sender}x>"),
                  (peer, sid, "Sender domain bad.example: no MX, no A (NXDOMAIN)"),
                  (peer, sid, ">>> 550 5.1.8 Sender address rejected: domain not found"),
                  (peer, sid, "<<< QUIT"), (peer, sid, f">>> 221 2.0.0 {HOST} closing connection"),
                  (peer, sid, "Disconnected")]
        return lines
    size = rng.randrange(800, 200_000)
    lines += [(peer, sid, f"<<< MAIL FROM:<{sender}> SIZE={size}"),
              (peer, sid, f"Sender domain {sender.split('@')[1]}: has MX"),
              (peer, sid, f">>> 250 2.1.0 <{sender}>... Sender ok")]
    rcpts = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        local = rng.random() < 0.4
        r = f"{rng.choice(USERS)}@{'example.com' if local else rng.choice(DOMAINS)}"
        lines.append((peer, sid, f"<<< RCPT TO:<{r}>"))
        if local and rng.random() < 0.1:
            lines.append((peer, sid, ">>> 550 5.1.1 Mailbox unavailable: no such user here"))
            continue
        fwd = "" if local else "; will forward"
        lines.append((peer, sid, f">>> 250 2.1.5 <{r}>... Recipient ok{fwd}"))
        rcpts.append(r)
        if not local:
            relay.append(r)
    if not rcpts:
        return [*lines, (peer, sid, "<<< QUIT"), (peer, sid, "Disconnected")]
    lines += [(peer, sid, "<<< DATA"),
              (peer, sid, '>>> 354 Enter mail, end with "." on a line by itself'),
              (peer, sid, f"<<< {size + 5} bytes (overall data transfer speed=912345 B/s)"),
              (peer, sid, "Start of mail processing")]
    lines += [(peer, sid, fmt.summary(sender, r, len(rcpts), size, "00:00:01", "OK", msgid))
              for r in rcpts]
    lines += [(peer, sid, f">>> 250 2.6.0 {size} bytes received in 00:00:01; Message id {msgid} "
                          "accepted for delivery"),
              (peer, sid, "<<< QUIT"), (peer, sid, f">>> 221 2.0.0 {HOST} closing connection"),
              (peer, sid, "Disconnected")]
    relay.insert(0, sender)
    return lines


def _delivery(rng: random.Random, sid: str, msgid: str, sender: str, rcpt: str,
              outcome: str) -> list:
    p = OUR_IP
    domain = rcpt.split("@")[1]
    mx = f"mx.{domain}"
    lines = [(p, sid, fmt.dns_mx(domain, [(mx, 10)])),
             (p, sid, fmt.connecting(mx, "203.0.113.7", 25)), (p, sid, "Connected"),
             (p, sid, f"<<< 220 {mx} ESMTP"), (p, sid, f">>> EHLO {HOST}"),
             (p, sid, f"<<< 250-{mx}"), (p, sid, "<<< 250 SIZE 52428800"),
             (p, sid, f">>> MAIL FROM:<{sender}>"), (p, sid, "<<< 250 2.1.0 Ok"),
             (p, sid, f">>> RCPT TO:<{rcpt}>")]
    if outcome == "DEFERRED":
        lines += [(p, sid, "<<< 451 4.7.1 Greylisted, try again in 10 minutes"),
                  (p, sid, fmt.summary(sender, rcpt, 1, 1000, "00:00:00", "DEFERRED", msgid)),
                  (p, sid, fmt.next_retry("2026-11-28 11:15:04"))]
    elif outcome == "FAILED":
        lines += [(p, sid, f"<<< 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown"),
                  (p, sid, fmt.summary(sender, rcpt, 1, 1000, "00:00:00", "FAILED", msgid)),
                  (p, sid, fmt.bounce_created("B" + msgid[1:], msgid))]
    else:
        lines += [(p, sid, "<<< 250 2.1.5 Ok"), (p, sid, ">>> DATA"),
                  (p, sid, "<<< 354 End data with <CR><LF>.<CR><LF>"),
                  (p, sid, ">>> 1000 bytes (overall data transfer speed=1450000 B/s)"),
                  (p, sid, f"<<< 250 2.0.0 Ok: queued as {rng.randrange(16**5):05X}"),
                  (p, sid, fmt.summary(sender, rcpt, 1, 1000, "00:00:01", "OK", msgid))]
    return [*lines, (p, sid, ">>> QUIT"), (p, sid, "<<< 221 2.0.0 Bye"), (p, sid, "Disconnected")]


def generate(path: str, n_lines: int, seed: int = 4) -> int:
    """Write a log of at least ``n_lines`` interleaved lines; returns the number written."""
    rng = random.Random(seed)
    active: list[list] = []
    written = 0
    sid_n = 0
    msg_n = 0
    t = 0
    with open(path, "w") as out:
        while written < n_lines or active:
            while written < n_lines and len(active) < 24:
                sid_n += 1
                msg_n += 1
                msgid = f"MF{msg_n:010d}"
                relay: list[str] = []
                active.append(_served(rng, f"{sid_n % 0xFFFF + 1:04X}", msgid, t, relay))
                if relay:
                    sender, *rcpts = relay
                    for r in rcpts:
                        sid_n += 1
                        roll = rng.random()
                        outcome = "DEFERRED" if roll < 0.05 else "FAILED" if roll < 0.07 else "OK"
                        d = _delivery(rng, f"{sid_n % 0xFFFF + 1:04X}", msgid, sender, r, outcome)
                        if outcome == "DEFERRED":  # and its retry, later
                            sid_n += 1
                            d += _delivery(rng, f"{sid_n % 0xFFFF + 1:04X}", msgid, sender, r,
                                           "OK")
                        elif outcome == "FAILED":  # and the bounce's delivery to the sender
                            sid_n += 1
                            d += _delivery(rng, f"{sid_n % 0xFFFF + 1:04X}", "B" + msgid[1:],
                                           "", sender, "OK")
                        active.append([None] * 30 + d)  # starts after the message is received
            i = rng.randrange(len(active))
            s = active[i]
            item = s.pop(0)
            if not s:
                active[i] = active[-1]
                active.pop()
            if item is None:
                continue
            peer, sid, body = item
            t += rng.random() < 0.05
            clock = f"{t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d}"
            out.write(fmt.line(peer, sid, clock, body) + "\n")
            written += 1
    return written


# -- one measurement, in its own process ---------------------------------------------------------
def _one(what: str, path: str) -> None:
    """The ``--one report-records`` child: the report computed from the records, as ``report``
    did before tracker/tally.py (and still does with a filter): reconstruct → records →
    report.Report.add, printed as the command prints it."""
    from mailferry.tracker import cli
    from mailferry.tracker import report as report_mod

    assert what == "report-records", what
    rep = report_mod.Report()
    stats = cli.run(cli.reader.discover([path]), rep.add)
    sys.stdout.write(report_mod.render(rep.as_dict(stats)))


_ENV = dict(os.environ)


def _bytecode_cache(directory: str) -> None:
    """Let the children cache compiled modules in ``directory`` (then warm it up). An installed
    mailferry has its bytecode compiled; a checkout run with PYTHONDONTWRITEBYTECODE=1 (as CI
    and sandboxes do) would compile every module of the tracker at each start, ~0.1 s of CPU
    that no user pays."""
    _ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    _ENV["PYTHONPYCACHEPREFIX"] = directory
    subprocess.run([sys.executable, "-c", "import mailferry.tracker.cli"], env=_ENV,
                   check=True)


def _child(argv: list[str], read: bool = False) -> tuple[float, float, float]:
    """Run ``argv`` with its output to /dev/null (or read and dropped: ``read``); its wall time,
    CPU time (user + system, from the kernel's accounting of that one child: os.wait4, the
    per-child form of resource.getrusage) and peak RSS in MB. The CPU time counts the
    process's start and imports (~0.15-0.2 s of Python here), which a user pays too."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE if read else subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=_ENV)
    if read:
        p.stdout.read()  # type: ignore[union-attr]
        p.stdout.close()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if p.returncode != 0:
        raise SystemExit(f"{argv} failed: exit {p.returncode}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def _measure(what: str, path: str) -> dict:
    """One command, as a user runs it (``python -m mailferry.tracker.cli …``, the standalone
    form of ``mailferry trace`` / ``report``), stdout to /dev/null."""
    argv = {"grep": ["grep", "-c", "MF", path],
            "report": [sys.executable, "-m", "mailferry.tracker.cli", "report", path],
            "trace": [sys.executable, "-m", "mailferry.tracker.cli", "trace", "--json", path],
            "report-records": [sys.executable, __file__, "--one", what, path]}[what]
    # GNU grep stops at the first match when its output is /dev/null: give it a pipe.
    wall, cpu, rss = _child(argv, read=what == "grep")
    return {"wall": wall, "cpu": cpu, "rss": rss}


def _machine() -> float:
    """Seconds of CPU for 10 million turns of an empty Python loop: how fast this machine is
    right now (about 0.12 s on a recent laptop; a loaded shared VM can be three times slower)."""
    c0 = time.process_time()
    for _ in range(10_000_000):
        pass
    return time.process_time() - c0


COMMANDS = (("grep", "grep -c"), ("report", "mailferry report"),
            ("trace", "mailferry trace --json"),
            ("report-records", "report via records"))  # the record path, for comparison


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--keep", help="write the log here instead of a temporary directory")
    ap.add_argument("--log", help="measure this existing log instead of generating one")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each command N times, alternating; keep the fastest (CPU)")
    ap.add_argument("--only", choices=[c for c, _ in COMMANDS], action="append",
                    help="measure only this command (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--one", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _one(*args.one)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.log:
            path = args.log
            with open(path, "rb") as f:
                n = sum(1 for _ in f)
        else:
            path = os.path.join(args.keep or tmp, "s20261128.log")
            t0 = time.perf_counter()
            n = generate(path, args.lines)
            print(f"generated {n:,} lines in {time.perf_counter() - t0:.1f} s: {path}",
                  file=sys.stderr)
        size = os.path.getsize(path)
        _bytecode_cache(os.path.join(tmp, "pycache"))
        wanted = [(c, name) for c, name in COMMANDS if (c in args.only if args.only else
                                                         c != "report-records")]
        best: dict[str, dict] = {}
        loops = []
        load = [os.getloadavg()[0]]
        for _ in range(args.repeat):
            loops.append(_machine())
            for what, _name in wanted:
                m = _measure(what, path)
                if what not in best or m["cpu"] < best[what]["cpu"]:
                    best[what] = m
        loops.append(_machine())
        load.append(os.getloadavg()[0])
        rows = [{"command": name, "lines": n, "bytes": size, **best[what],
                 "lines_per_s_cpu": n / max(best[what]["cpu"], 1e-6),
                 "lines_per_s_wall": n / max(best[what]["wall"], 1e-6)}
                for what, name in wanted]
        machine = {"empty_loop_10M_cpu_s": [round(x, 3) for x in loops], "load_average": load,
                   "cpus": os.cpu_count(), "python": sys.version.split()[0]}
        if args.json:
            print(json.dumps({"machine": machine, "results": rows}, indent=1))
            return
        print(f"log: {n:,} lines, {size / 1e6:.0f} MB; best of {args.repeat} (by CPU)")
        print(f"machine: empty loop of 10M turns = "
              f"{min(loops):.2f}-{max(loops):.2f} s CPU; load average "
              f"{load[0]:.1f} → {load[1]:.1f} on {os.cpu_count()} CPUs")
        print(f"\n{'command':<24} {'wall s':>7} {'CPU s':>7} {'lines/s (CPU)':>14} "
              f"{'lines/s (wall)':>15} {'MB/s (CPU)':>10} {'peak RSS':>9}")
        for r in rows:
            print(f"{r['command']:<24} {r['wall']:>7.2f} {r['cpu']:>7.2f} "
                  f"{r['lines_per_s_cpu']:>14,.0f} {r['lines_per_s_wall']:>15,.0f} "
                  f"{size / max(r['cpu'], 1e-6) / 1e6:>10.1f} {r['rss']:>6.0f} MB")
        print("\nCPU s: user + system time of the child process (os.wait4), its start and "
              "imports included;\nwall s: its elapsed time; peak RSS: its maximum resident "
              "set.")


if __name__ == "__main__":
    main()
