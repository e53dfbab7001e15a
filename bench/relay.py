"""Relay benchmark: end-to-end delivered messages/s through mailferry and through Postfix.

Each server accepts N messages (Postfix's smtp-source, SESSIONS parallel sessions) for a remote
domain and relays them to the same foreign server, Postfix's smtp-sink on loopback. Both use the
sink as their relay host (Postfix ``relayhost = [127.0.0.1]:PORT``; mailferry ``[relay] host``),
so neither spends time on DNS and both may reuse connections (Postfix's connection cache,
mailferry's connection reuse). The figure is N / (time from the first message sent until the
sink holds all N) — "delivered end to end" — for each server, side by side, and their ratio.

Both keep their durability: the queue is fsynced before the 250 to the client. Only loopback;
every run is bounded in count and time. Run as root (the Postfix master needs it)::

    python bench/relay.py                         # 3000 x 4 KiB, 10 sessions, both, 3 runs each
    python bench/relay.py --messages 5000 --sessions 20 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.daemon import Daemon  # noqa: E402
from tests.support.postfix import (  # noqa: E402
    PostfixInstance,
    SmtpSink,
    free_port,
    postfix_unavailable,
    wait_for_banner,
)

SENDER = "sender@bench.test"
RECIPIENT = "user@remote.test"


class CountingSink:
    """smtp-sink that counts messages: ``-c`` would print counters on a terminal only, so it
    dumps each message into a folder and we count the files."""

    def __init__(self, root: Path, port: int) -> None:
        self.dump = root / "sink"
        self.sink = SmtpSink(port=port, dump_dir=self.dump, backlog=1024)

    def __enter__(self) -> CountingSink:
        self.sink.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sink.stop()

    def count(self) -> int:
        return sum(1 for p in self.dump.iterdir() if not p.name.startswith("."))


def wait_count(sink: CountingSink, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink.count() >= n:
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"sink has {sink.count()} of {n} messages after {timeout}s")


def load(port: int, n: int, sessions: int, size: int) -> None:
    subprocess.run(["smtp-source", "-c", "-l", str(size), "-m", str(n), "-s", str(sessions),
                    "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)


def run_postfix(root: Path, sink_port: int, args: argparse.Namespace) -> float:
    port = free_port()
    extra = {"relayhost": f"[127.0.0.1]:{sink_port}", "smtp_host_lookup": "native",
             "default_destination_concurrency_limit": "20"}
    with PostfixInstance(root / "postfix", port, extra_main_cf=extra):
        wait_for_banner("127.0.0.1", port)
        with CountingSink(root / "pf", sink_port) as sink:
            start = time.monotonic()
            load(port, args.messages, args.sessions, args.size)
            done = wait_count(sink, args.messages, args.timeout)
    return args.messages / (done - start)


def run_mailferry(root: Path, sink_port: int, args: argparse.Namespace) -> float:
    port = free_port()
    daemon = Daemon(root / "mailferry", port=port, domains=("bench.test",),
                    overrides={"relay": {"host": f"127.0.0.1:{sink_port}"},
                               "delivery": {"per_domain": 20},
                               "limits": {"sessions_per_ip": 1000}})
    with daemon, CountingSink(root / "mf", sink_port) as sink:
        start = time.monotonic()
        load(port, args.messages, args.sessions, args.size)
        done = wait_count(sink, args.messages, args.timeout)
    return args.messages / (done - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", choices=("postfix", "mailferry"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per server (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.messages <= 100_000:
        parser.error("--messages must be between 1 and 100000")
    why = postfix_unavailable()
    if why and args.only != "mailferry":
        parser.error(why)
    runs: dict[str, list[float]] = {}
    # This machine's disk and CPUs are shared: alternate the servers and take the median.
    for _ in range(args.repeat):
        for name, run in (("postfix", run_postfix), ("mailferry", run_mailferry)):
            if args.only and args.only != name:
                continue
            with tempfile.TemporaryDirectory(prefix="mf-relay-", dir="/var/tmp") as tmp:
                root = Path(tmp)
                root.chmod(0o755)  # the sink and Postfix run as other users
                runs.setdefault(name, []).append(run(root, free_port(), args))
    results = {name: statistics.median(rates) for name, rates in runs.items()}
    ratio = results["mailferry"] / results["postfix"] if len(results) == 2 else None
    if args.json:
        print(json.dumps({"messages": args.messages, "sessions": args.sessions,
                          "size": args.size, "delivered_per_s": results, "runs": runs,
                          "ratio": ratio}))
    else:
        print(f"relay: {args.messages} x {args.size} B, {args.sessions} sessions, "
              "smtp-source -> server -> smtp-sink (relay host)")
        for name, rate in results.items():
            each = ", ".join(f"{r:.0f}" for r in runs[name])
            print(f"  {name:10s} {rate:8.0f} delivered msg/s (median of {each})")
        if ratio is not None:
            print(f"  mailferry/postfix = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
