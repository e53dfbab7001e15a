"""Session limits, the listen backlog, and a real MTA client (Postfix's smtp-source) under load."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dialog import Dialog


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("limits"),
                    overrides={"limits": {"sessions": 6, "sessions_per_ip": 3}})
    daemon.add_user("alice@example.test")
    with daemon:
        yield daemon


def _served_eventually(daemon: Daemon, source: str = "127.0.0.1") -> bool:
    """Poll (bounded) until a new client from ``source`` gets 220. Sessions of earlier tests
    are released when the server sees their FIN, which may come after the client moved on."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with Dialog(daemon.host, daemon.port, source=source) as d:
            if d.banner[0] == 220:
                return True
        time.sleep(0.05)
    return False


def _hold(daemon: Daemon, sources: list[str]) -> list[Dialog]:
    return [Dialog(daemon.host, daemon.port, source=src) for src in sources]


def test_sessions_per_ip_421(limited: Daemon) -> None:
    for _attempt in range(20):  # retry while sessions of earlier tests are still being released
        held = _hold(limited, ["127.0.0.1"] * 3)
        try:
            if all(d.banner[0] == 220 for d in held):
                with Dialog(limited.host, limited.port) as extra:
                    assert extra.banner == (
                        421, ["4.7.0 Too many connections from your address, try again later"])
                    assert extra.closed()
                # another address is still welcome
                with Dialog(limited.host, limited.port, source="127.0.0.2") as other:
                    assert other.banner[0] == 220
                break
        finally:
            for d in held:
                d.close()
        time.sleep(0.1)
    else:
        pytest.fail("never got 3 sessions from one address")
    assert "sessions already open from this address" in limited.wait_log("Refused:")
    assert _served_eventually(limited)


def test_sessions_total_421(limited: Daemon) -> None:
    for _attempt in range(20):
        held = _hold(limited, [f"127.0.0.{10 + i}" for i in range(6)])
        try:
            if all(d.banner[0] == 220 for d in held):
                with Dialog(limited.host, limited.port, source="127.0.0.30") as extra:
                    assert extra.banner == (421, ["4.7.0 Too many connections, try again later"])
                break
        finally:
            for d in held:
                d.close()
        time.sleep(0.1)
    else:
        pytest.fail("never got 6 sessions at once")
    # once they are gone, new clients are served again
    assert _served_eventually(limited)


def test_backlog_holds_200_simultaneous_connects(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "burst", overrides={"limits": {"sessions_per_ip": 300}})
    with daemon:
        socks = []
        try:
            for _ in range(200):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((daemon.host, daemon.port))
                socks.append(s)
            banners = 0
            for s in socks:
                s.setblocking(True)
                s.settimeout(10)
                if s.recv(64).startswith(b"220 "):
                    banners += 1
            assert banners == 200
        finally:
            for s in socks:
                s.close()


@pytest.mark.skipif(shutil.which("smtp-source") is None,
                    reason="Postfix's smtp-source is installed by scripts/setup.sh")
def test_smtp_source_load_all_delivered_once(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "load")
    daemon.add_user("alice@example.test")
    with daemon:
        out = subprocess.run(
            ["smtp-source", "-s", "20", "-m", "500", "-l", "4096", "-f", "load@remote.test",
             "-t", "alice@example.test", f"{daemon.host}:{daemon.port}"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        found = daemon.wait_messages("alice@example.test", 500, timeout=60)
        assert len(found) == 500
        log = daemon.log_text()
        assert log.count(" OK MF") == 500  # one *** line per accepted message
        assert log.count("Connected, local IP=127.0.0.1") == log.count("Disconnected")
