"""Opening the small SQLite files mailferry keeps beside the queue (users.db, blocks.db).

Both are written by the command line while the server reads them, hold things others must not
read (password hashes, who is blocked), and carry a schema version: one way to open them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_db(path: Path, schema: str, schema_version: int, error: type[Exception], *,
            synchronous: str | None = None) -> sqlite3.Connection:
    """Open (creating with ``schema``) a private WAL database; failures raise ``error`` with a
    one-line message naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file ourselves, so it is never readable by others.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the CLI's writes
        if synchronous is not None:
            conn.execute(f"PRAGMA synchronous = {synchronous}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.executescript(schema)
        elif version > schema_version:
            conn.close()
            raise error(f"{path}: made by a newer mailferry (schema {version})")
    except (OSError, sqlite3.DatabaseError) as err:
        raise error(f"{path}: {getattr(err, 'strerror', None) or err}") from None
    return conn
