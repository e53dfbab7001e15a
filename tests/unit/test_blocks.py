"""inbound/blocks.py: the block list in SQLite, as the server and the CLI use it together."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from mailferry.inbound.blocks import BlockStore, BlockStoreError
from mailferry.inbound.guard import Block


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def blk(ip: str, now: float, seconds: float = 3600, reason: str = "RELAY") -> Block:
    return Block(ip, reason, "20 relay attempts in 600 s", now, now + seconds)


def wait_seen(store: BlockStore, ip: str, present: bool) -> bool:
    """The server rechecks the file at most every 0.2 s: poll (bounded) for the change."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (store.get(ip) is not None) == present:
            return True
        time.sleep(0.02)
    return False


def test_blocks_survive_reopening(tmp_path: Path) -> None:
    clock = Clock()
    with BlockStore(tmp_path / "blocks.db", clock=clock) as server:
        server.add(blk("192.0.2.7", clock.now))
        assert server.get("192.0.2.7") is not None  # in force at once, before it is written
    assert stat.S_IMODE((tmp_path / "blocks.db").stat().st_mode) == 0o600
    with BlockStore(tmp_path / "blocks.db", clock=clock) as again:
        got = again.get("192.0.2.7")
        assert got == blk("192.0.2.7", clock.now)
        assert [b.ip for b in again.list()] == ["192.0.2.7"]


def test_expired_blocks_are_ignored_and_pruned(tmp_path: Path) -> None:
    clock = Clock()
    with BlockStore(tmp_path / "blocks.db", durable=True, clock=clock) as store:
        store.add(blk("192.0.2.1", clock.now, seconds=10))
        store.add(blk("192.0.2.2", clock.now, seconds=100))
        clock.now += 10
        assert store.get("192.0.2.1") is None  # expires is exclusive
        assert store.get("192.0.2.2") is not None
        assert [b.ip for b in store.list()] == ["192.0.2.2"]
        store.add(blk("192.0.2.3", clock.now))  # a write prunes what has expired
    rows = sqlite3.connect(tmp_path / "blocks.db").execute(
        "SELECT ip FROM blocks ORDER BY ip").fetchall()
    assert rows == [("192.0.2.2",), ("192.0.2.3",)]


def test_server_sees_cli_changes_while_running(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    server = BlockStore(path)  # background writes, as in the daemon
    try:
        assert server.get("192.0.2.7") is None
        now = time.time()
        with BlockStore(path, durable=True) as cli:
            cli.add(Block("192.0.2.7", "MANUAL", "by hand", now, now + 60))
        assert wait_seen(server, "192.0.2.7", present=True)
        assert server.get("192.0.2.7").reason == "MANUAL"  # type: ignore[union-attr]
        server.add(blk("192.0.2.8", now))
        server.sync()
        with BlockStore(path, durable=True) as cli:
            assert cli.remove("192.0.2.7") is not None
            assert cli.remove("192.0.2.7") is None  # not blocked (any more)
            assert [b.ip for b in cli.list()] == ["192.0.2.8"]  # the server's own block
        assert wait_seen(server, "192.0.2.7", present=False)
        assert server.get("192.0.2.8") is not None  # a reload keeps the server's own blocks
    finally:
        server.close()


def test_a_pending_write_survives_a_reload(tmp_path: Path) -> None:
    """A block added by the server is in force before it reaches the file; a reload caused by
    another process in that moment must not lose it."""
    path = tmp_path / "blocks.db"
    server = BlockStore(path)
    try:
        now = time.time()
        for i in range(200):
            server.add(blk(f"10.0.{i // 250}.{i % 250}", now))
            if i % 50 == 0:
                with BlockStore(path, durable=True) as cli:
                    cli.add(Block(f"10.9.0.{i // 50}", "MANUAL", "", now, now + 60))
        assert all(server.get(f"10.0.0.{i}") is not None for i in range(200))
    finally:
        server.close()
    with BlockStore(path) as again:
        assert len(again.list()) == 204


def test_remove_reports_the_lifted_block(tmp_path: Path) -> None:
    clock = Clock()
    with BlockStore(tmp_path / "blocks.db", durable=True, clock=clock) as store:
        store.add(blk("2001:db8::1", clock.now, reason="AUTHFAIL"))
        lifted = store.remove("2001:db8::1")
        assert lifted is not None and lifted.reason == "AUTHFAIL"
        assert store.get("2001:db8::1") is None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BlockStoreError, match="made by a newer mailferry"):
        BlockStore(path)


def test_unusable_path_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BlockStoreError, match=r"blocks\.db"):
        BlockStore(tmp_path / "file" / "blocks.db")
