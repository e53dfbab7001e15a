"""The user directory: local domains, users (with an optional login password) and aliases.

Where: ``inbound`` asks ``resolve()`` / ``is_local_domain()`` for every RCPT (from the event loop,
so these answer from an in-memory snapshot); AUTH will ask ``check_password()``; the ``mailferry
user|alias|domain`` commands write through the same class. The data lives in SQLite at
``<data_dir>/users.db`` (WAL), so the CLI can change it while the server runs: the server notices
the other process's commit through ``PRAGMA data_version`` and reloads its snapshot.

Must not: store a plain password, reveal through timing whether a user exists, or do slow work in
``resolve()`` (a snapshot reload happens only after another process committed a change).
``check_password()`` costs one argon2id hash (tens of milliseconds): call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import argon2

from mailferry.address import Address, AddressError, parse_mailbox
from mailferry.sqlite_db import open_db

if TYPE_CHECKING:
    from mailferry.config import Config

DB_NAME = "users.db"
MAX_ALIAS_DEPTH = 10  # alias → alias → … at most this many expansions deep

_SCHEMA_VERSION = 1
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS domains (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,   -- lower-cased local@domain
    password_hash TEXT          -- argon2id PHC string; NULL: receives mail, cannot log in
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT NOT NULL,      -- lower-cased local@domain
    position INTEGER NOT NULL,  -- keeps the targets in the order they were added
    target TEXT NOT NULL,       -- lower-cased if local; a remote local part keeps its case
    PRIMARY KEY (address, position)
) WITHOUT ROWID;
PRAGMA user_version = {_SCHEMA_VERSION};
COMMIT;
"""


_RECHECK = 0.2  # seconds between checks for changes made by other processes


class DirectoryError(ValueError):
    """A refused change (bad address, unknown domain, no such user …); the message says why."""


@dataclass(frozen=True)
class _Snapshot:
    """What resolve() needs, read in one transaction; replaced whole, never changed but the memo."""

    domains: frozenset[str]  # static and database domains
    users: frozenset[str]
    aliases: dict[str, tuple[str, ...]]
    expansions: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # memo


_LOGIN_CACHE_SIZE = 10_000  # logins remembered at most (bounded: memory)


class Directory:
    """Users, aliases and local domains in one SQLite file, with a fast in-memory snapshot."""

    def __init__(self, path: Path, static_domains: Iterable[str] = (), *,
                 login_cache_ttl: float = 0.0) -> None:
        self.path = Path(path)
        # Successful logins, remembered as Dovecot's auth cache does (see check_password):
        # address → (stored hash, keyed digest of the password, expiry on the monotonic clock).
        self._login_cache_ttl = login_cache_ttl
        self._login_cache: dict[str, tuple[str, bytes, float]] = {}
        self._login_key = secrets.token_bytes(32)  # per process: digests mean nothing elsewhere
        self._static = frozenset(d.lower().rstrip(".") for d in static_domains)
        self._hasher = argon2.PasswordHasher()  # argon2id with the library's current defaults
        self._dummy_hash: str | None = None
        # One connection shared by the event loop and check_password's worker thread: the lock
        # serialises its use (sqlite3 objects are not safe to use from two threads at once).
        self._lock = threading.Lock()
        self._conn = self._connect()
        self._checked = float("-inf")
        self._snap: _Snapshot
        self._version: int  # PRAGMA data_version when _snap was read
        with self._lock:
            self._load()

    @classmethod
    def from_config(cls, config: Config) -> Directory:
        return cls(config.data_dir / DB_NAME, config.domains.local)

    def _connect(self) -> sqlite3.Connection:
        return open_db(self.path, _SCHEMA, _SCHEMA_VERSION, DirectoryError)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the snapshot --------------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        # data_version changes only when another connection commits. Asking costs a few µs
        # alone but ~55 µs in a busy server (SQLite releases the GIL, and getting it back waits
        # for the worker threads), 3 times per message: so ask at most every _RECHECK seconds.
        # A `mailferry user add` is seen within that.
        now = time.monotonic()
        if now - self._checked >= _RECHECK:
            self._checked = now
            with self._lock:
                if self._conn.execute("PRAGMA data_version").fetchone()[0] != self._version:
                    self._load()
        return self._snap

    def _load(self) -> None:
        """Read everything in one transaction, so the snapshot is consistent. Caller holds lock."""
        c = self._conn
        c.execute("BEGIN")
        try:
            version = c.execute("PRAGMA data_version").fetchone()[0]
            domains = {name for (name,) in c.execute("SELECT name FROM domains")}
            users = frozenset(a for (a,) in c.execute("SELECT address FROM users"))
            aliases: dict[str, list[str]] = {}
            for address, target in c.execute(
                "SELECT address, target FROM aliases ORDER BY address, position"
            ):
                aliases.setdefault(address, []).append(target)
        finally:
            c.execute("COMMIT")
        self._snap = _Snapshot(
            self._static | domains, users, {a: tuple(t) for a, t in aliases.items()}
        )
        self._version = version

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the snapshot is reloaded afterwards (our own commits do not
        change our data_version)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._load()

    # -- lookups (hot path) --------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self._current().domains

    def resolve(self, address: str) -> tuple[str, ...] | None:
        """The final mailboxes for ``local@domain`` (any case), or None if nobody is there.

        An alias expands recursively (at most MAX_ALIAS_DEPTH deep, loop-safe, deduplicated,
        in order). A target in a non-local domain is kept as it is: it will be relayed. A local
        target that is neither user nor alias (removed since), or a loop that reaches no
        mailbox, is dropped; an alias that reaches nothing at all resolves to None.
        """
        snap = self._current()
        key = address.lower()
        if key not in snap.aliases:
            return (key,) if key in snap.users else None
        # Only alias expansions are cached: their number is bounded by the aliases table, while
        # caching misses would let a client grow memory by trying random recipients.
        try:
            return snap.expansions[key]
        except KeyError:
            pass
        found: dict[str, None] = {}  # an ordered set
        self._expand(snap, key, (key,), found)
        result = snap.expansions[key] = tuple(found) or None
        return result

    def _expand(
        self, snap: _Snapshot, alias: str, chain: tuple[str, ...], found: dict[str, None]
    ) -> None:
        for target in snap.aliases[alias]:
            key = target.lower()
            if key in snap.aliases and key not in chain and len(chain) < MAX_ALIAS_DEPTH:
                self._expand(snap, key, (*chain, key), found)
            elif key in snap.users:
                # Also where an alias names itself or an alias up the chain: "bob → bob, archive"
                # delivers to bob's own mailbox instead of looping.
                found[key] = None
            elif key.rpartition("@")[2] not in snap.domains:
                found[target] = None

    def check_password(self, address: str, password: str) -> bool:
        """True only for an existing user with a login whose password matches.

        Unknown users and users without a login still cost one hash verification, so the
        answer's timing does not tell whether the address exists.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT password_hash FROM users WHERE address = ?", (address.lower(),)
            ).fetchone()
        stored = row[0] if row else None
        if stored is not None and self._login_cache_ttl > 0:
            digest = hmac.new(self._login_key, password.encode(), hashlib.sha256).digest()
            cached = self._login_cache.get(address.lower())
            # A hit needs the same stored hash (a password change or a new user of the same
            # name misses) and the same password; anything else pays the full argon2 check.
            if (cached is not None and cached[0] == stored and time.monotonic() < cached[2]
                    and hmac.compare_digest(cached[1], digest)):
                return True
        if stored is None and self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        try:
            # argon2 compares in constant time; a missing hash is replaced by a dummy one.
            self._hasher.verify(stored if stored is not None else self._dummy_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        if stored is None:
            return False
        if self._login_cache_ttl > 0:
            self._remember_login(address.lower(), stored, password)
        return True

    def _remember_login(self, address: str, stored: str, password: str) -> None:
        """Cache a successful login. Why: argon2id is slow on purpose (tens of ms, up to a second
        on a busy small machine), and a mail client authenticates on every connection — a
        submission server without this spends its CPU re-hashing the same right password.
        Only successes are cached, so guessing still costs the full hash per attempt; the digest
        is keyed with a per-process secret, so the cache holds nothing a thief could reuse."""
        digest = hmac.new(self._login_key, password.encode(), hashlib.sha256).digest()
        cache = self._login_cache
        if len(cache) >= _LOGIN_CACHE_SIZE:
            cache.pop(next(iter(cache)))  # the oldest entry: insertion order
        cache.pop(address, None)
        cache[address] = (stored, digest, time.monotonic() + self._login_cache_ttl)

    # -- administration ------------------------------------------------------------------------

    def domains(self) -> list[str]:
        return sorted(self._current().domains)

    def users(self) -> list[str]:
        return sorted(self._current().users)

    def aliases(self) -> dict[str, list[str]]:
        return {a: list(t) for a, t in sorted(self._current().aliases.items())}

    def add_domain(self, domain: str) -> None:
        name = _domain_name(domain)
        if name in self._static:
            raise DirectoryError(f"{name} is already local ([domains] local in the config file)")
        with self._write() as c:
            if c.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise DirectoryError(f"domain {name} already exists")
            c.execute("INSERT INTO domains (name) VALUES (?)", (name,))

    def remove_domain(self, domain: str) -> None:
        name = _domain_name(domain)
        if name in self._static:
            raise DirectoryError(
                f"{name} comes from [domains] local in the config file: remove it there"
            )
        with self._write() as c:
            if not c.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise DirectoryError(f"no such domain: {name}")
            pattern = "%@" + name  # a domain name holds no LIKE wildcards (% or _)
            users = c.execute(
                "SELECT count(*) FROM users WHERE address LIKE ?", (pattern,)
            ).fetchone()[0]
            aliases = c.execute(
                "SELECT count(DISTINCT address) FROM aliases WHERE address LIKE ?",
                (pattern,),
            ).fetchone()[0]
            if users or aliases:
                raise DirectoryError(
                    f"{name} still has {users} user(s) and {aliases} alias(es): remove them first"
                )
            c.execute("DELETE FROM domains WHERE name = ?", (name,))

    def add_user(self, address: str, password: str | None) -> None:
        """Add a user; without a password it receives mail but cannot log in."""
        key = self._local_mailbox(address).key
        if password is not None and not password:
            raise DirectoryError("the password is empty (leave it out for a user without login)")
        # Hash before taking the write lock: it is the slow part.
        hashed = self._hasher.hash(password) if password is not None else None
        with self._write() as c:
            if c.execute("SELECT 1 FROM users WHERE address = ?", (key,)).fetchone():
                raise DirectoryError(f"user {key} already exists")
            c.execute("INSERT INTO users (address, password_hash) VALUES (?, ?)", (key, hashed))

    def remove_user(self, address: str) -> None:
        key = _mailbox(address).key
        with self._write() as c:
            if c.execute("DELETE FROM users WHERE address = ?", (key,)).rowcount == 0:
                raise DirectoryError(f"no such user: {key}")

    def add_alias(self, address: str, targets: Sequence[str]) -> None:
        """Add targets to an alias (created if needed); targets already there are skipped.

        A local target must be an existing user or alias (catches typos); a remote one is kept
        with its local part's case (RFC 5321 §2.4: only the remote host may interpret it).
        """
        key = self._local_mailbox(address).key
        if not targets:
            raise DirectoryError(f"alias {key}: give at least one target")
        snap = self._current()
        stored: list[str] = []
        for text in targets:
            target = _mailbox(text)
            if target.domain in snap.domains:
                if target.key not in snap.users and target.key not in snap.aliases:
                    raise DirectoryError(f"alias {key}: target {target.key} is no user or alias")
                stored.append(target.key)
            else:
                stored.append(str(target))
        with self._write() as c:
            rows = c.execute(
                "SELECT position, target FROM aliases WHERE address = ?", (key,)
            ).fetchall()
            have = {t for _, t in rows}
            position = max((p for p, _ in rows), default=-1)
            for target_text in dict.fromkeys(stored):
                if target_text not in have:
                    position += 1
                    c.execute(
                        "INSERT INTO aliases (address, position, target) VALUES (?, ?, ?)",
                        (key, position, target_text),
                    )

    def remove_alias(self, address: str) -> None:
        key = _mailbox(address).key
        with self._write() as c:
            if c.execute("DELETE FROM aliases WHERE address = ?", (key,)).rowcount == 0:
                raise DirectoryError(f"no such alias: {key}")

    def _local_mailbox(self, address: str) -> Address:
        mailbox = _mailbox(address)
        if not self.is_local_domain(mailbox.domain):
            raise DirectoryError(
                f"{mailbox.domain} is not a local domain "
                f"(add it first: mailferry domain add {mailbox.domain})"
            )
        return mailbox


def _mailbox(text: str) -> Address:
    try:
        mailbox = parse_mailbox(text)
    except AddressError:
        raise DirectoryError(f"not a valid address: {text!r}") from None
    if mailbox.source_route:
        raise DirectoryError(f"source routes are not allowed: {text!r}")
    return mailbox


def _domain_name(text: str) -> str:
    domain = _mailbox(f"postmaster@{text}").domain if text else ""
    if not domain or domain.startswith("["):
        raise DirectoryError(f"not a domain name: {text!r}")
    return domain
