"""Queue control end to end: the real daemon, its control socket, the real `mailferry` command.

A message to c.test meets an aiosmtpd peer that answers 451 until the test lets it accept, so it
waits in the queue; the commands then list, show, hold, flush, release, delete and bounce it, and
the transaction log must record each operation.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailferry.control.paths import bindable
from tests.e2e.test_outbound import _mta, _send, _shared_port
from tests.support.daemon import Daemon
from tests.support.fakedns import FakeDNS
from tests.support.smtp_peer import Peer

SLOW_RETRY = {"retry_schedule": [600], "retry_every": 600, "delay_warning": 0}


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    with FakeDNS() as server:
        server.add("a.test", "MX", "10 mx.a.test")
        server.add("mx.a.test", "A", "127.0.0.2")
        server.add("c.test", "MX", "10 mx.c.test")
        server.add("mx.c.test", "A", "127.0.0.3")
        yield server


class Gate:
    """The peer's DATA answer: 451 until opened."""

    def __init__(self) -> None:
        self.open = False

    def __call__(self, _n: int) -> str:
        return "250 2.0.0 queued as P1" if self.open else "451 4.3.0 mailbox busy, try later"


def _until(what: str, ready: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {timeout}s")
        time.sleep(0.05)


def _json(daemon: Daemon, *args: str) -> object:
    out = daemon.cli(*args, "--json")
    return json.loads(out.stdout)


def _listed(daemon: Daemon) -> dict[str, dict]:
    return {m["id"]: m for m in _json(daemon, "queue", "list")}  # type: ignore[union-attr]


def _deferred(daemon: Daemon, msgid: str) -> None:
    daemon.wait_line("SYSTEM", f"Deferred {msgid} to <")
    _until(f"{msgid} deferred in the list",
           lambda: _listed(daemon).get(msgid, {}).get("state") == "deferred")


def _received_ids(peer: Peer, daemon_msgids: list[str]) -> list[str]:
    """Which of these message IDs the peer accepted (each message carries its ID in our
    Received header)."""
    with peer.lock:
        datas = [m.data for m in peer.received]
    return [i for i in daemon_msgids if any(i.encode() in d for d in datas)]


@pytest.fixture
def setup(tmp_path: Path, dns: FakeDNS) -> Iterator[tuple[Daemon, Peer, Gate]]:
    port = _shared_port("127.0.0.2", "127.0.0.3")
    gate = Gate()
    peer = Peer("127.0.0.3", port, data_reply=gate)
    daemon = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test", queue=dict(SLOW_RETRY))
    daemon.add_user("alice@a.test")
    with peer, daemon:
        yield daemon, peer, gate


def test_list_show_status_hold_flush_release_across_a_restart(
        setup: tuple[Daemon, Peer, Gate]) -> None:
    daemon, peer, gate = setup
    msgid = _send(daemon, "alice@a.test", ["carol@c.test"], "stuck one")
    _deferred(daemon, msgid)

    # list: last error, next attempt (the schedule says 600 s), the recipient's state
    [entry] = _json(daemon, "queue", "list")  # type: ignore[misc]
    now = time.time()
    assert entry["id"] == msgid and entry["sender"] == "alice@a.test"
    assert entry["state"] == "deferred" and entry["attempts"] == 1
    assert entry["last_error"].startswith("451 4.3.0 mailbox busy")
    assert now + 500 < entry["next_attempt"] < now + 610
    assert 0 <= entry["age"] < 60 and entry["size"] > 0
    assert entry["recipients"] == [{
        "address": "carol@c.test", "original": "carol@c.test", "local": False,
        "state": "deferred", "last_reply": entry["last_error"], "attempts": 1,
        "remote": entry["recipients"][0]["remote"]}]
    assert entry["recipients"][0]["remote"].endswith("[127.0.0.3]")
    table = daemon.cli("queue", "list").stdout
    assert msgid in table and "deferred" in table and "-> <carol@c.test>  deferred  451" in table
    assert "1 message(s)" in table

    # show: envelope, headers, the state store's history and the log's story
    shown = _json(daemon, "queue", "show", msgid)
    assert isinstance(shown, dict)
    assert "Subject: stuck one" in shown["headers"] and msgid in shown["headers"]
    assert shown["envelope"]["client_ip"] == "127.0.0.1"
    [attempt] = shown["history"]
    assert attempt["event"] == "deferred" and attempt["recipient"] == "carol@c.test"
    assert attempt["reply"].startswith("451") and attempt["attempt"] == 1
    assert shown["log_record"]["msgid"] == msgid
    assert "*** <alice@a.test> <carol@c.test>" in shown["trace"]
    text = daemon.cli("queue", "show", msgid).stdout
    assert "History (queue state):" in text and "deferred <carol@c.test>: 451" in text
    assert "Transaction log (as `mailferry trace --explain`):" in text

    # status: the numbers
    st = _json(daemon, "status")
    assert isinstance(st, dict)
    assert st["queue"] == {"total": 1, "active": 0, "deferred": 1, "held": 0}
    assert st["uptime"] > 0 and st["sessions"]["open"] == 0
    assert st["last_errors"][0]["msgid"] == msgid
    assert st["last_errors"][0]["reply"].startswith("451")
    assert "1 message(s): 0 active, 1 deferred, 0 held" in daemon.cli("status").stdout

    # hold, then flush: a held message is not tried
    assert daemon.cli("queue", "hold", msgid).stdout.strip() == f"{msgid} is on hold"
    uid = os.geteuid()
    daemon.wait_line("SYSTEM", f"Queue: {msgid} held by admin (control socket, uid {uid})")
    assert _listed(daemon)[msgid]["state"] == "held"
    refused = daemon.cli("queue", "flush", msgid, check=False)
    assert refused.returncode == 1
    assert refused.stderr == f"mailferry: error: {msgid} is on hold: release it first\n"
    gate.open = True
    assert daemon.cli("queue", "flush").stdout.strip() == "0 message(s) will be tried now"
    daemon.wait_line("SYSTEM", "Queue: 0 message(s) flushed by admin")
    # A second message to the same peer goes through; the held one stays.
    other = _send(daemon, "alice@a.test", ["dave@c.test"], "goes through")
    _until("the second message at the peer", lambda: _received_ids(peer, [other]) == [other])
    assert _received_ids(peer, [msgid]) == []
    assert list(_listed(daemon)) == [msgid]

    # the hold survives a restart (SIGTERM, then a new process)
    assert daemon.stop() == 0
    assert not (daemon.data / "control.sock").exists()  # removed on shutdown
    daemon.start()
    third = _send(daemon, "alice@a.test", ["erin@c.test"], "after restart")
    _until("the third message at the peer", lambda: _received_ids(peer, [third]) == [third])
    assert _listed(daemon)[msgid]["state"] == "held"
    assert _received_ids(peer, [msgid]) == []

    # release (+ flush): delivered now that the peer accepts
    assert "released" in daemon.cli("queue", "release", msgid).stdout
    daemon.cli("queue", "flush", "--domain", "c.test")
    _until("the released message at the peer", lambda: _received_ids(peer, [msgid]) == [msgid])
    _until("an empty queue", lambda: _listed(daemon) == {})
    assert daemon.cli("queue", "list").stdout == "The queue is empty.\n"
    log = daemon.log_text()
    assert f"Queue: {msgid} released by admin (control socket, uid {uid})" in log
    assert "flushed by admin (control socket" in log
    assert len(_received_ids(peer, [msgid])) == 1


def test_delete_bounce_and_errors(setup: tuple[Daemon, Peer, Gate]) -> None:
    daemon, peer, _gate = setup
    doomed = _send(daemon, "alice@a.test", ["carol@c.test"], "delete me")
    returned = _send(daemon, "alice@a.test", ["carol@c.test", "dave@c.test"], "bounce me")
    _deferred(daemon, doomed)
    _deferred(daemon, returned)

    assert daemon.cli("queue", "delete", doomed).stdout.strip() == f"{doomed} deleted"
    assert doomed not in _listed(daemon) and doomed not in daemon.queued()
    assert not (daemon.data / "queue" / "state" / doomed).exists()
    daemon.wait_line("SYSTEM", f"Queue: {doomed} deleted by admin", "no notice sent")

    out = daemon.cli("queue", "bounce", returned).stdout
    assert out.startswith(f"{returned} bounced (2 recipient(s)); notice MF")
    [dsn_path] = daemon.wait_messages("alice@a.test", 1)
    dsn = email.message_from_bytes(dsn_path.read_bytes())
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    raw = dsn_path.read_text(errors="replace")
    assert "Action: failed" in raw and "Status: 5.0.0" in raw
    assert "Diagnostic-Code: X-Mailferry; returned to the sender by the administrator of" \
        in raw
    assert "Remote-MTA" not in raw
    human = " ".join(raw.split())
    assert ("<carol@c.test>: returned to the sender by the administrator of mx.a.test before "
            "it could be delivered (the last attempt got: 451 4.3.0 mailbox busy, try later)"
            ) in human
    assert "Final-Recipient: rfc822; carol@c.test" in raw
    assert "Final-Recipient: rfc822; dave@c.test" in raw
    _until("an empty queue", lambda: daemon.queued() == [])
    line = daemon.wait_line("SYSTEM", f"Queue: {returned} bounced by admin")
    assert "<carol@c.test>, <dave@c.test>; notice MF" in line
    assert daemon.wait_line("SYSTEM", f"for {returned}", "Bounce ")
    assert _received_ids(peer, [doomed, returned]) == []

    # errors: one line on stderr, exit status 1
    for args, message in (
            (("queue", "show", "MF0000000000"), "no message MF0000000000 in the queue"),
            (("queue", "hold", "MF0000000000"), "no message MF0000000000 in the queue"),
            (("queue", "delete", "../../etc"), "not a message ID: '../../etc'"),
            (("queue", "release", doomed), f"no message {doomed} in the queue")):
        done = daemon.cli(*args, check=False)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == f"mailferry: error: {message}\n"


def test_not_running_and_stale_socket(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "d")
    done = daemon.cli("queue", "list", check=False)
    sock = daemon.data / "control.sock"
    assert done.returncode == 1
    assert done.stderr == f"mailferry: error: mailferry is not running (no control socket at" \
        f" {sock})\n"
    daemon.start()
    assert daemon.cli("status").stdout.startswith("mailferry is running (pid ")
    daemon.kill9()
    assert sock.exists()  # left behind by the crash
    done = daemon.cli("status", check=False)
    assert done.returncode == 1
    assert done.stderr == f"mailferry: error: mailferry is not running (nothing answers on" \
        f" {sock})\n"
    with daemon:  # a new server replaces the stale socket
        assert json.loads(daemon.cli("status", "--json").stdout)["queue"]["total"] == 0
        assert (sock.stat().st_mode & 0o777) == 0o600
        # A second server on the same data directory (another port) refuses to start, before
        # it touches the queue.
        twin = Daemon(tmp_path / "twin", overrides={"server": {"data_dir": str(daemon.data)}})
        done = subprocess.run(
            [sys.executable, "-m", "mailferry.cli", "serve", "--config", str(twin.config)],
            capture_output=True, text=True, timeout=60, cwd=twin.root)
        assert done.returncode == 1
        assert done.stderr.endswith(f"mailferry: error: control socket: another mailferry "
                                    f"answers on {sock}\n")
        assert json.loads(daemon.cli("status", "--json").stdout)["pid"] == daemon.proc.pid


def _cli_as(uid: int, *args: str) -> tuple[int, str]:
    """Run the real command line (``cli.main``) in a forked child under ``uid``; its exit status
    and stderr. Forked, not exec'd: the interpreter may live where that uid cannot read."""
    from mailferry.cli import main

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                main(list(args))
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another uid")
def test_another_uid_is_refused() -> None:
    # A root that all users may traverse (pytest's own tmp folders are 0700).
    root = Path(tempfile.mkdtemp(prefix="mf-control-"))
    try:
        root.chmod(0o755)
        daemon = Daemon(root / "d")
        (root / "d").chmod(0o755)
        with daemon:
            sock = daemon.data / "control.sock"
            nobody = 65534

            def as_nobody(*args: str) -> tuple[int, str]:
                return _cli_as(nobody, *args, "--config", str(daemon.config))

            (root / "d" / "mailferry.toml").chmod(0o644)
            daemon.data.chmod(0o755)
            # The socket file's mode keeps others out first …
            code, err = as_nobody("queue", "list")
            assert code == 1
            assert err == (f"mailferry: error: permission denied: cannot open the "
                                   f"control socket {sock} (run this as the user mailferry "
                                   "runs as, or as root)\n")
            # … and with the mode loosened, the server's SO_PEERCRED check still refuses.
            sock.chmod(0o666)
            code, err = as_nobody("queue", "list")
            assert code == 1
            assert err == (f"mailferry: error: permission denied: uid {nobody} may not "
                                   f"control this mailferry (it runs as uid 0; only that user "
                                   "and root may)\n")
            # The owner still may.
            assert daemon.cli("queue", "list").stdout == "The queue is empty.\n"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_raw_protocol_errors(tmp_path: Path) -> None:
    with Daemon(tmp_path / "d") as daemon:
        with socket.socket(socket.AF_UNIX) as s:
            with bindable(daemon.data / "control.sock") as name:
                s.connect(name)
            f = s.makefile("rwb")
            answers = []
            for request in (b"not json\n", b'["op"]\n', b'{"op": "explode"}\n',
                            b'{"op": "show"}\n', b'{"op": "flush", "domain": 5}\n',
                            b'{"op": "status"}\n'):
                f.write(request)
                f.flush()
                answers.append(json.loads(f.readline()))
        assert answers[:5] == [
            {"ok": False, "error": "not a JSON request"},
            {"ok": False, "error": 'a request is {"op": "...", ...}'},
            {"ok": False, "error": "unknown operation 'explode'"},
            {"ok": False, "error": "not a message ID: 'None'"},
            {"ok": False, "error": "not a domain: 5"},
        ]
        assert answers[5]["ok"] is True and answers[5]["result"]["queue"]["total"] == 0


def test_hold_and_delete_during_a_delivery_attempt(tmp_path: Path, dns: FakeDNS) -> None:
    """An attempt is never cut short: hold applies after it, delete waits for it."""
    port = _shared_port("127.0.0.2", "127.0.0.3")
    proceed = threading.Event()

    def slow_451(_n: int) -> str:
        proceed.wait(8)  # below the client's command timeout (10 s)
        return "451 4.3.0 mailbox busy, try later"

    peer = Peer("127.0.0.3", port, data_reply=slow_451)
    daemon = _mta(tmp_path / "a", dns, "127.0.0.2", port, "a.test", queue=dict(SLOW_RETRY))
    daemon.add_user("alice@a.test")
    with peer, daemon:
        held = _send(daemon, "alice@a.test", ["carol@c.test"], "held in flight")
        _until("the attempt in flight", lambda: peer.datas_seen == 1)
        assert _listed(daemon)[held]["state"] == "active"
        out = daemon.cli("queue", "hold", held).stdout
        assert out == f"{held} is on hold after the delivery attempt in flight\n"
        proceed.set()
        daemon.wait_line("SYSTEM", f"Deferred {held} to <carol@c.test>")
        _until("held after the attempt", lambda: _listed(daemon)[held]["state"] == "held")
        assert _listed(daemon)[held]["next_attempt"] is None
        assert daemon.wait_line("SYSTEM", f"Queue: {held} held by admin").endswith(
            ": after the delivery attempt in flight")

        proceed.clear()
        doomed = _send(daemon, "alice@a.test", ["dave@c.test"], "deleted in flight")
        _until("the second attempt in flight", lambda: peer.datas_seen == 2)
        deleting = subprocess.Popen(
            [sys.executable, "-m", "mailferry.cli", "queue", "delete", doomed, "--config",
             str(daemon.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # It waits for the attempt: still running, and the message still there, while the
            # peer thinks (a second is plenty for the command to reach the server).
            time.sleep(1.0)
            assert deleting.poll() is None and doomed in daemon.queued()
            proceed.set()
            out, err = deleting.communicate(timeout=30)
        finally:
            if deleting.poll() is None:
                deleting.kill()
                deleting.wait()
        assert (deleting.returncode, out, err) == (0, f"{doomed} deleted\n", "")
        assert doomed not in daemon.queued()
        assert not (daemon.data / "queue" / "state" / doomed).exists()
        text = daemon.log_text()
        assert text.index(f"Deferred {doomed} to <dave@c.test>") < \
            text.index(f"Queue: {doomed} deleted by admin")
        assert list(_listed(daemon)) == [held]
