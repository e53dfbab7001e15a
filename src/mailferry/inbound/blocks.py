"""The block list: blocked client IPs in SQLite at ``<data_dir>/blocks.db``, with a fast
in-memory copy.

Where: the server asks :meth:`BlockStore.get` at every connection from an untrusted client and
:meth:`BlockStore.add` when guard.py trips; ``mailferry block list|add|remove`` use the same
class from another process while the server runs. As in verify/users.py, the server notices the
other process's commit through ``PRAGMA data_version``, asked at most every 0.2 s, so a check is
a dict lookup.

Durability: WAL. The server writes with ``synchronous=NORMAL`` from one worker thread: a commit
is then a write to the WAL without fsync, so a burst of blocks during an attack never waits on
the disk and never on the event loop. A process crash loses nothing (the WAL is in the page
cache); a power loss may lose the last few blocks, which is harmless: those clients are counted
and blocked again. The CLI writes with ``synchronous=FULL``: an administrator's ``block remove``
must survive whatever happens next. Expired blocks are ignored everywhere and deleted whenever a
block is written and when the store opens.

Must not: decide anything (guard.py does) or write the transaction log (the session does).
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mailferry.inbound.guard import Block
from mailferry.sqlite_db import open_db

DB_NAME = "blocks.db"
_RECHECK = 0.2  # seconds between checks for changes made by other processes
_SCHEMA_VERSION = 1
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS blocks (
    ip TEXT PRIMARY KEY,        -- canonical form (guard.canonical_ip)
    reason TEXT NOT NULL,       -- AUTHFAIL, RELAY, ... MANUAL
    detail TEXT NOT NULL,       -- "20 relay attempts in 600 s" or the administrator's text
    created REAL NOT NULL,      -- Unix time
    expires REAL NOT NULL       -- Unix time
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_expires ON blocks (expires);
PRAGMA user_version = {_SCHEMA_VERSION};
COMMIT;
"""


class BlockStoreError(ValueError):
    """The block list cannot be opened or changed; the message says why."""


class BlockStore:
    def __init__(self, path: Path, *, durable: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        """``durable``: fsync every commit (the CLI); else commits are written by a background
        thread without fsync (the server, see the module docstring)."""
        self.path = Path(path)
        self._clock = clock
        # One connection, shared by the caller's thread and the writer thread: the lock
        # serialises its use. Our own commits do not change our data_version, so only another
        # process's change makes us reload.
        self._lock = threading.Lock()
        self._conn = self._connect(durable)
        self._writer = None if durable else concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mailferry-blocks")
        self._pending: dict[str, Block] = {}  # added in memory, not yet committed
        self._blocks: dict[str, Block] = {}
        self._checked = float("-inf")
        self._version = -1
        with self._lock:
            self._prune()
            self._load()

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, durable: bool = False) -> BlockStore:
        return cls(Path(data_dir) / DB_NAME, durable=durable)

    def _connect(self, durable: bool) -> sqlite3.Connection:
        return open_db(self.path, _SCHEMA, _SCHEMA_VERSION, BlockStoreError,
                       synchronous="FULL" if durable else "NORMAL")

    def close(self) -> None:
        """Wait for pending writes, then close."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        with self._lock:
            self._conn.close()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the hot path ----------------------------------------------------------------------------
    def get(self, ip: str) -> Block | None:
        """The active block of ``ip`` (canonical form), or None."""
        now = time.monotonic()
        if now - self._checked >= _RECHECK:
            self._checked = now
            with self._lock:
                if self._conn.execute("PRAGMA data_version").fetchone()[0] != self._version:
                    self._load()
        block = self._blocks.get(ip)
        if block is None:
            return None
        if not block.active(self._clock()):
            self._blocks.pop(ip, None)  # deleted from the file with the next write
            return None
        return block

    # --- changes ---------------------------------------------------------------------------------
    def add(self, block: Block) -> None:
        """Block ``block.ip`` (replacing an earlier block of it). In the server the block is in
        force at once and written in the background."""
        self._blocks[block.ip] = block
        if self._writer is None:
            self._save(block)
            return
        self._pending[block.ip] = block
        self._writer.submit(self._save, block)

    def sync(self) -> None:
        """Wait until the blocks added so far are in the file."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def _save(self, block: Block) -> None:
        with self._lock:
            try:
                c = self._conn
                c.execute("BEGIN IMMEDIATE")
                try:
                    c.execute("DELETE FROM blocks WHERE expires <= ?", (self._clock(),))
                    c.execute("INSERT OR REPLACE INTO blocks (ip, reason, detail, created, expires)"
                              " VALUES (?, ?, ?, ?, ?)",
                              (block.ip, block.reason, block.detail, block.created,
                               block.expires))
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                c.execute("COMMIT")
            finally:
                if self._pending.get(block.ip) is block:
                    del self._pending[block.ip]

    def remove(self, ip: str) -> Block | None:
        """Lift the block of ``ip``; returns it (None when it was not blocked)."""
        self.sync()  # our pending writes first
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT ip, reason, detail, created, expires FROM blocks"
                            " WHERE ip = ? AND expires > ?", (ip, self._clock())).fetchone()
            c.execute("DELETE FROM blocks WHERE ip = ?", (ip,))
            c.execute("COMMIT")
        self._blocks.pop(ip, None)
        return Block(*row) if row else None

    def list(self) -> list[Block]:
        """Active blocks, oldest first (read from the file: the current state, whoever wrote)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT ip, reason, detail, created, expires FROM blocks WHERE expires > ?"
                " ORDER BY created, ip", (self._clock(),)).fetchall()
        return [Block(*row) for row in rows]

    # --- internals (caller holds the lock) -------------------------------------------------------
    def _load(self) -> None:
        c = self._conn
        c.execute("BEGIN")
        try:
            version = c.execute("PRAGMA data_version").fetchone()[0]
            rows = c.execute("SELECT ip, reason, detail, created, expires FROM blocks"
                             " WHERE expires > ?", (self._clock(),)).fetchall()
        finally:
            c.execute("COMMIT")
        blocks = {row[0]: Block(*row) for row in rows}
        blocks.update(self._pending)  # added here, still on their way to the file
        self._blocks = blocks
        self._version = version

    def _prune(self) -> None:
        self._conn.execute("DELETE FROM blocks WHERE expires <= ?", (self._clock(),))
