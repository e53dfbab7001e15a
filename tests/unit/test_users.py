"""verify.users.Directory: users, aliases, domains, passwords, and other processes' changes."""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import argon2
import pytest

from mailferry.config import Config, DomainsConfig, ServerConfig
from mailferry.verify.users import MAX_ALIAS_DEPTH, Directory, DirectoryError


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "users.db"


@pytest.fixture
def directory(db: Path) -> Iterator[Directory]:
    with Directory(db, ["Example.TEST"]) as d:
        yield d


# -- domains ------------------------------------------------------------------------------------


def test_static_and_added_domains(directory: Directory) -> None:
    assert directory.domains() == ["example.test"]
    directory.add_domain("Other.Test.")
    assert directory.domains() == ["example.test", "other.test"]
    for name in ("example.test", "EXAMPLE.test", "other.test", "other.test."):
        assert directory.is_local_domain(name)
    assert not directory.is_local_domain("third.test")
    directory.remove_domain("OTHER.test")
    assert directory.domains() == ["example.test"]
    assert not directory.is_local_domain("other.test")


def test_domain_errors(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match=r"already local .*config file"):
        directory.add_domain("example.test")
    with pytest.raises(DirectoryError, match=r"comes from \[domains\] local"):
        directory.remove_domain("example.test")
    with pytest.raises(DirectoryError, match=r"no such domain: nowhere.test"):
        directory.remove_domain("nowhere.test")
    for bad in ("", "bad domain", "[192.0.2.1]", "a..b"):
        with pytest.raises(DirectoryError, match=r"not a"):
            directory.add_domain(bad)
    directory.add_domain("other.test")
    with pytest.raises(DirectoryError, match=r"domain other.test already exists"):
        directory.add_domain("other.test")


def test_domain_with_users_cannot_be_removed(directory: Directory) -> None:
    directory.add_domain("other.test")
    directory.add_user("bob@other.test", None)
    directory.add_alias("team@other.test", ["bob@other.test"])
    with pytest.raises(DirectoryError, match=r"1 user\(s\) and 1 alias\(es\): remove them"):
        directory.remove_domain("other.test")
    directory.remove_user("bob@other.test")
    directory.remove_alias("team@other.test")
    directory.remove_domain("other.test")
    assert directory.domains() == ["example.test"]


# -- users --------------------------------------------------------------------------------------


def test_add_resolve_remove_user(directory: Directory) -> None:
    assert directory.resolve("bob@example.test") is None
    directory.add_user("Bob@Example.Test", None)
    assert directory.users() == ["bob@example.test"]
    assert directory.resolve("bob@example.test") == ("bob@example.test",)
    assert directory.resolve("BOB@EXAMPLE.TEST") == ("bob@example.test",)
    assert directory.resolve("bobby@example.test") is None
    directory.remove_user("BOB@example.test")
    assert directory.users() == []
    assert directory.resolve("bob@example.test") is None


def test_user_errors(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match=r"other.test is not a local domain .*domain add"):
        directory.add_user("bob@other.test", "pw")
    for bad in ("bob", "bob@", "@example.test", "bo b@example.test", "@a.test:bob@example.test"):
        with pytest.raises(DirectoryError):
            directory.add_user(bad, None)
    directory.add_user("bob@example.test", None)
    with pytest.raises(DirectoryError, match=r"user bob@example.test already exists"):
        directory.add_user("BOB@example.test", None)
    with pytest.raises(DirectoryError, match=r"no such user: alice@example.test"):
        directory.remove_user("alice@example.test")
    with pytest.raises(DirectoryError, match=r"password is empty"):
        directory.add_user("carol@example.test", "")
    assert directory.users() == ["bob@example.test"]


def test_users_survive_reopening(db: Path) -> None:
    with Directory(db, ["example.test"]) as d:
        d.add_domain("other.test")
        d.add_user("bob@other.test", "secret")
        d.add_alias("all@example.test", ["bob@other.test"])
    with Directory(db, ["example.test"]) as d:
        assert d.domains() == ["example.test", "other.test"]
        assert d.users() == ["bob@other.test"]
        assert d.aliases() == {"all@example.test": ["bob@other.test"]}
        assert d.check_password("bob@other.test", "secret")


def test_database_file_is_private_and_in_wal_mode(directory: Directory, db: Path) -> None:
    directory.add_user("bob@example.test", "pw")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_from_config(tmp_path: Path) -> None:
    config = Config(server=ServerConfig(data_dir=tmp_path / "d"),
                    domains=DomainsConfig(local=("a.test", "b.test")))
    with Directory.from_config(config) as d:
        assert d.path == tmp_path / "d" / "users.db"
        assert d.domains() == ["a.test", "b.test"]
    assert (tmp_path / "d" / "users.db").exists()


def test_unopenable_database_is_a_directory_error(tmp_path: Path) -> None:
    (tmp_path / "users.db").mkdir()
    with pytest.raises(DirectoryError, match=r"users.db"):
        Directory(tmp_path / "users.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(DirectoryError, match=r"junk.db"):
        Directory(tmp_path / "junk.db")


# -- passwords ----------------------------------------------------------------------------------


def test_password_check(directory: Directory, db: Path) -> None:
    directory.add_user("bob@example.test", "correct horse")
    directory.add_user("nologin@example.test", None)
    assert directory.check_password("bob@example.test", "correct horse")
    assert directory.check_password("BOB@example.test", "correct horse")
    assert not directory.check_password("bob@example.test", "correct horse ")
    assert not directory.check_password("bob@example.test", "")
    assert not directory.check_password("nobody@example.test", "correct horse")
    assert not directory.check_password("nologin@example.test", "")
    assert not directory.check_password("nologin@example.test", "anything")


def test_password_is_stored_as_argon2id_hash_only(directory: Directory, db: Path) -> None:
    directory.add_user("bob@example.test", "plain-secret-4711")
    directory.add_user("nologin@example.test", None)
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT address, password_hash FROM users"))
    assert rows["bob@example.test"].startswith("$argon2id$")
    assert rows["nologin@example.test"] is None
    directory.close()
    for file in db.parent.iterdir():  # database, WAL and shared-memory files alike
        assert b"plain-secret-4711" not in file.read_bytes()


class _CountingHasher(argon2.PasswordHasher):
    def __init__(self) -> None:
        super().__init__()
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


def test_unknown_user_still_costs_one_hash(directory: Directory) -> None:
    """Timing must not reveal which addresses exist: every check runs one argon2 verification."""
    directory.add_user("bob@example.test", "pw")
    directory.add_user("nologin@example.test", None)
    counter = _CountingHasher()
    directory._hasher = counter  # the one seam: count verifications, do not fake them
    for address in ("bob@example.test", "nobody@example.test", "nologin@example.test"):
        before = counter.verified
        directory.check_password(address, "guess")
        assert counter.verified == before + 1, address


# -- aliases ------------------------------------------------------------------------------------


def test_alias_expands_in_order_deduplicated_remote_kept(directory: Directory) -> None:
    directory.add_user("alice@example.test", None)
    directory.add_user("bob@example.test", None)
    directory.add_alias("Team@example.test",
                        ["BOB@example.test", "Carol.Smith@Remote.TEST", "alice@example.test",
                         "bob@example.test"])
    assert directory.aliases() == {
        "team@example.test": ["bob@example.test", "Carol.Smith@remote.test", "alice@example.test"]
    }
    # A remote local part keeps its case: only the remote host may interpret it.
    assert directory.resolve("TEAM@example.test") == (
        "bob@example.test", "Carol.Smith@remote.test", "alice@example.test"
    )


def test_alias_add_appends_and_remove_deletes(directory: Directory) -> None:
    directory.add_user("alice@example.test", None)
    directory.add_alias("team@example.test", ["alice@example.test"])
    directory.add_alias("team@example.test", ["x@remote.test", "alice@example.test"])
    assert directory.resolve("team@example.test") == ("alice@example.test", "x@remote.test")
    directory.remove_alias("team@example.test")
    assert directory.aliases() == {}
    assert directory.resolve("team@example.test") is None
    with pytest.raises(DirectoryError, match=r"no such alias: team@example.test"):
        directory.remove_alias("team@example.test")


def test_alias_errors(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match=r"target ghost@example.test is no user or alias"):
        directory.add_alias("team@example.test", ["ghost@example.test"])
    with pytest.raises(DirectoryError, match=r"at least one target"):
        directory.add_alias("team@example.test", [])
    with pytest.raises(DirectoryError, match=r"not a local domain"):
        directory.add_alias("team@remote.test", ["x@remote.test"])
    with pytest.raises(DirectoryError, match=r"not a valid address"):
        directory.add_alias("team@example.test", ["not an address"])
    assert directory.aliases() == {}


def test_alias_chain(directory: Directory) -> None:
    directory.add_user("alice@example.test", None)
    directory.add_user("bob@example.test", None)
    directory.add_alias("devs@example.test", ["alice@example.test", "ext@remote.test"])
    directory.add_alias("ops@example.test", ["bob@example.test", "alice@example.test"])
    directory.add_alias("all@example.test", ["devs@example.test", "ops@example.test"])
    assert directory.resolve("all@example.test") == (
        "alice@example.test", "ext@remote.test", "bob@example.test"
    )


def _chain(directory: Directory, length: int) -> str:
    """a1 → a2 → … → a<length> → user; returns a1."""
    directory.add_user("user@example.test", None)
    target = "user@example.test"
    for i in range(length, 0, -1):
        directory.add_alias(f"a{i}@example.test", [target])
        target = f"a{i}@example.test"
    return target


def test_alias_chain_as_deep_as_allowed_resolves(directory: Directory) -> None:
    top = _chain(directory, MAX_ALIAS_DEPTH)
    assert MAX_ALIAS_DEPTH == 10
    assert directory.resolve(top) == ("user@example.test",)


def test_alias_chain_too_deep_reaches_nobody(directory: Directory) -> None:
    top = _chain(directory, MAX_ALIAS_DEPTH + 1)
    assert directory.resolve(top) is None
    assert directory.resolve("a2@example.test") == ("user@example.test",)


def test_alias_loop_without_mailbox_resolves_to_none(directory: Directory) -> None:
    directory.add_user("tmp@example.test", None)
    directory.add_alias("a@example.test", ["tmp@example.test"])
    directory.add_alias("b@example.test", ["a@example.test"])
    directory.remove_alias("a@example.test")
    directory.add_alias("a@example.test", ["b@example.test"])  # now a → b → a
    assert directory.resolve("a@example.test") is None
    assert directory.resolve("b@example.test") is None


def test_alias_loop_through_a_user_delivers_to_the_user_once(directory: Directory) -> None:
    directory.add_user("bob@example.test", None)
    directory.add_alias("bob@example.test", ["bob@example.test", "archive@remote.test"])
    assert directory.resolve("bob@example.test") == ("bob@example.test", "archive@remote.test")
    directory.add_alias("x@example.test", ["bob@example.test"])
    directory.add_alias("bob@example.test", ["x@example.test"])  # bob → bob, archive, x → bob
    assert directory.resolve("x@example.test") == ("bob@example.test", "archive@remote.test")


def test_removed_user_is_dropped_from_alias(directory: Directory) -> None:
    directory.add_user("alice@example.test", None)
    directory.add_user("bob@example.test", None)
    directory.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
    directory.remove_user("alice@example.test")
    assert directory.resolve("team@example.test") == ("bob@example.test",)
    directory.remove_user("bob@example.test")
    assert directory.resolve("team@example.test") is None


# -- another process changes the database -------------------------------------------------------


def test_changes_by_another_process_are_seen_within_the_recheck_interval(db: Path) -> None:
    import time

    server = Directory(db, ["example.test"])
    admin = Directory(db, ["example.test"])
    try:
        assert server.resolve("late@example.test") is None
        admin.add_user("late@example.test", None)
        deadline = time.monotonic() + 2  # bounded: _RECHECK is 0.2 s
        while server.resolve("late@example.test") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.resolve("late@example.test") == ("late@example.test",)
    finally:
        server.close()
        admin.close()


def test_changes_by_another_instance_are_seen_without_restart(db: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    # The server looks for other processes' changes every _RECHECK seconds; 0 makes every call
    # look, so that this test sees each change at once instead of sleeping.
    monkeypatch.setattr("mailferry.verify.users._RECHECK", 0.0)
    server = Directory(db, ["example.test"])
    admin = Directory(db, ["example.test"])
    try:
        assert server.resolve("new@example.test") is None
        admin.add_user("new@example.test", "pw")
        assert server.resolve("new@example.test") == ("new@example.test",)
        assert server.check_password("new@example.test", "pw")

        admin.add_domain("other.test")
        assert server.is_local_domain("other.test")
        admin.add_alias("team@example.test", ["new@example.test", "x@remote.test"])
        assert server.resolve("team@example.test") == ("new@example.test", "x@remote.test")
        admin.add_alias("team@example.test", ["y@remote.test"])  # memoised expansion is renewed
        assert server.resolve("team@example.test") == (
            "new@example.test", "x@remote.test", "y@remote.test"
        )

        admin.remove_user("new@example.test")
        assert server.resolve("new@example.test") is None
        assert server.users() == []
    finally:
        server.close()
        admin.close()


def test_resolve_is_fast(directory: Directory) -> None:
    """resolve() runs in the event loop for every RCPT: it must stay far below 20 µs."""
    for i in range(50):
        directory.add_user(f"user{i}@example.test", None)
    directory.add_alias("team@example.test", [f"user{i}@example.test" for i in range(10)])
    rounds = 20_000
    for address in ("user7@example.test", "team@example.test", "nobody@example.test"):
        start = time.perf_counter()
        for _ in range(rounds):
            directory.resolve(address)
        per_call = (time.perf_counter() - start) / rounds
        assert per_call < 20e-6, f"{address}: {per_call * 1e6:.1f} µs per resolve"


# -- the login cache ([auth] login_cache_ttl) ----------------------------------------------


def _server_directory(db: Path, ttl: float) -> tuple[Directory, _CountingHasher]:
    server = Directory(db, ["example.test"], login_cache_ttl=ttl)
    counting = _CountingHasher()
    server._hasher = counting
    return server, counting


def test_a_successful_login_is_remembered_and_a_wrong_password_is_not(db: Path) -> None:
    with Directory(db, ["example.test"]) as admin:
        admin.add_user("alice@example.test", "right horse")
    server, counting = _server_directory(db, 3600)
    with server:
        assert server.check_password("alice@example.test", "right horse")
        assert server.check_password("Alice@Example.TEST", "right horse")
        assert counting.verified == 1  # the second login did not re-hash
        # A wrong password is never answered from the cache: each guess costs a full check.
        assert not server.check_password("alice@example.test", "wrong")
        assert not server.check_password("alice@example.test", "wrong")
        assert counting.verified == 3
        assert not server.check_password("nobody@example.test", "right horse")
        assert counting.verified == 4


def test_a_changed_or_removed_password_ends_the_cached_login(db: Path) -> None:
    with Directory(db, ["example.test"]) as admin:
        admin.add_user("alice@example.test", "old secret")
        server, _ = _server_directory(db, 3600)
        with server:
            assert server.check_password("alice@example.test", "old secret")
            admin.remove_user("alice@example.test")
            assert not server.check_password("alice@example.test", "old secret")
            admin.add_user("alice@example.test", "new secret")
            assert not server.check_password("alice@example.test", "old secret")
            assert server.check_password("alice@example.test", "new secret")


def test_login_cache_off_checks_the_hash_every_time(db: Path) -> None:
    with Directory(db, ["example.test"]) as admin:
        admin.add_user("alice@example.test", "right horse")
    server, counting = _server_directory(db, 0)
    with server:
        for _ in range(3):
            assert server.check_password("alice@example.test", "right horse")
        assert counting.verified == 3
