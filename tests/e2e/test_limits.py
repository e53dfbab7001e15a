"""Session limits, the listen backlog, and a real MTA client (Postfix's smtp-source) under load."""

from __future__ import annotations

import shutil
import socket
import subprocess
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


def test_sessions_per_ip_421(limited: Daemon) -> None:
    held = [Dialog(limited.host, limited.port) for _ in range(3)]
    try:
        with Dialog(limited.host, limited.port) as extra:
            assert extra.banner[0] == 421
            assert extra.closed()
        # another address is still welcome
        with Dialog(limited.host, limited.port, source="127.0.0.2") as other:
            assert other.banner[0] == 220
    finally:
        for d in held:
            d.close()
    assert "sessions already open from this address" in limited.wait_log("Refused:")


def test_sessions_total_421(limited: Daemon) -> None:
    held = [Dialog(limited.host, limited.port, source=f"127.0.0.{10 + i}") for i in range(6)]
    try:
        with Dialog(limited.host, limited.port, source="127.0.0.30") as extra:
            assert extra.banner == (421, ["4.7.0 Too many connections, try again later"])
    finally:
        for d in held:
            d.close()
    # once they are gone, new clients are served again
    with Dialog(limited.host, limited.port) as d:
        assert d.banner[0] == 220


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
