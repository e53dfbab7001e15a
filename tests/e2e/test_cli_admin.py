"""The real ``mailferry`` command as a subprocess: users, aliases, domains and ``config check``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailferry.verify.users import Directory
from tests.support.daemon import Daemon

GOOD = Path(__file__).parents[1] / "data" / "configs" / "good" / "full.toml"
BAD = Path(__file__).parents[1] / "data" / "configs" / "bad" / "recipients_not_int.toml"


def run(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailferry.cli", *args],
        cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def ok(cwd: Path, *args: str, stdin: str | None = None) -> str:
    proc = run(cwd, *args, stdin=stdin)
    assert proc.returncode == 0, f"mailferry {' '.join(args)}: {proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout


def fails(cwd: Path, *args: str, code: int = 1) -> str:
    """Run a command that must fail: one line on stderr, the given exit status, no traceback."""
    proc = run(cwd, *args)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.rstrip("\n")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "mailferry.toml"
    path.parent.mkdir()
    path.write_text('[server]\ndata_dir = "../data"\n[domains]\nlocal = ["example.test"]\n')
    return path


def test_users_aliases_domains_through_the_cli(tmp_path: Path, config: Path) -> None:
    c = ("--config", str(config))
    ok(tmp_path, "domain", "add", "Other.Test", *c)
    assert ok(tmp_path, "domain", "list", *c).splitlines() == ["example.test", "other.test"]

    ok(tmp_path, "user", "add", "Alice@Other.test", "--password-stdin", *c, stdin="s3cret pw\n")
    ok(tmp_path, "user", "add", "bob@example.test", *c)
    assert ok(tmp_path, "user", "list", *c).splitlines() == ["alice@other.test", "bob@example.test"]

    ok(tmp_path, "alias", "add", "team@example.test", "alice@other.test", "bob@example.test",
       "Ext@Remote.test", *c)
    assert ok(tmp_path, "alias", "list", *c) == (
        "team@example.test: alice@other.test, bob@example.test, Ext@remote.test\n"
    )

    # The database is where the config file says (relative to the file), and holds a hash only.
    db = tmp_path / "data" / "users.db"
    assert db.exists()
    assert not (tmp_path / "var").exists()
    with Directory(db, ["example.test"]) as directory:
        assert directory.check_password("alice@other.test", "s3cret pw")
        assert not directory.check_password("bob@example.test", "")
        assert directory.resolve("team@example.test") == (
            "alice@other.test", "bob@example.test", "Ext@remote.test"
        )

    ok(tmp_path, "alias", "remove", "team@example.test", *c)
    ok(tmp_path, "user", "remove", "alice@other.test", *c)
    ok(tmp_path, "domain", "remove", "other.test", *c)
    assert ok(tmp_path, "alias", "list", *c) == ""
    assert ok(tmp_path, "user", "list", *c) == "bob@example.test\n"
    assert ok(tmp_path, "domain", "list", *c) == "example.test\n"


def test_config_option_before_or_after_the_command(tmp_path: Path, config: Path) -> None:
    ok(tmp_path, "--config", str(config), "user", "add", "bob@example.test")
    assert ok(tmp_path, "user", "list", "--config", str(config)) == "bob@example.test\n"
    assert ok(tmp_path, "-c", str(config), "user", "list") == "bob@example.test\n"
    assert (tmp_path / "data" / "users.db").exists()


def test_without_config_the_data_goes_to_dot_var(tmp_path: Path) -> None:
    ok(tmp_path, "user", "add", "bob@example.test", "--password", "pw")
    assert (tmp_path / "var" / "users.db").exists()
    assert ok(tmp_path, "user", "list") == "bob@example.test\n"


def test_admin_errors_are_one_line(tmp_path: Path, config: Path) -> None:
    c = ("--config", str(config))
    assert fails(tmp_path, "user", "add", "bob@nowhere.test", *c) == (
        "mailferry: error: nowhere.test is not a local domain "
        "(add it first: mailferry domain add nowhere.test)"
    )
    assert fails(tmp_path, "user", "add", "not-an-address", *c) == (
        "mailferry: error: not a valid address: 'not-an-address'"
    )
    assert fails(tmp_path, "user", "remove", "ghost@example.test", *c) == (
        "mailferry: error: no such user: ghost@example.test"
    )
    assert fails(tmp_path, "alias", "add", "team@example.test", "ghost@example.test", *c) == (
        "mailferry: error: alias team@example.test: target ghost@example.test is no user or alias"
    )
    assert fails(tmp_path, "domain", "remove", "example.test", *c) == (
        "mailferry: error: example.test comes from [domains] local in the config file: "
        "remove it there"
    )
    proc = run(tmp_path, "user", "add", "x@example.test", "--password", "a", "--password-stdin", *c)
    assert proc.returncode == 2
    assert proc.stderr == (
        "mailferry: error: give --password or --password-stdin, not both "
        "(see 'mailferry user add --help')\n"
    )
    assert fails(tmp_path, "user", "add", code=2) == (
        "mailferry: error: Missing argument 'ADDRESS'. (see 'mailferry user add --help')"
    )
    assert ok(tmp_path, "user", "list", *c) == ""


def test_broken_config_stops_every_command(tmp_path: Path) -> None:
    expected = f'{BAD}:12: limits.recipients: must be a positive integer, got "ten"'
    assert fails(tmp_path, "user", "list", "--config", str(BAD)) == f"mailferry: error: {expected}"
    missing = tmp_path / "missing.toml"
    assert fails(tmp_path, "domain", "list", "--config", str(missing)) == (
        f"mailferry: error: {missing}: cannot read: No such file or directory"
    )


def test_config_check(tmp_path: Path) -> None:
    good = GOOD.parent / "listeners.toml"
    assert ok(tmp_path, "config", "check", "--config", str(good)) == f"{good}: ok\n"
    # full.toml names certificate files that do not exist here: serve could not start.
    assert fails(tmp_path, "config", "check", "--config", str(GOOD)) == (
        f"{GOOD}: tls: {GOOD.parent / 'certs' / 'mx.pem'}: no such file")
    assert fails(tmp_path, "config", "check", "--config", str(BAD)) == (
        f'{BAD}:12: limits.recipients: must be a positive integer, got "ten"'
    )
    (tmp_path / "syntax.toml").write_text("[limits\n")
    assert fails(tmp_path, "config", "check", "--config", "syntax.toml").startswith(
        "syntax.toml:1: TOML syntax error: "
    )
    assert fails(tmp_path, "config", "check", code=2) == (
        "mailferry: error: give the file to check: --config FILE "
        "(see 'mailferry config check --help')"
    )
    assert not (tmp_path / "var").exists()  # checking touches no data directory


def test_installed_console_script(tmp_path: Path) -> None:
    """The `mailferry` entry point from pyproject.toml, as a user runs it."""
    script = Path(sys.executable).parent / "mailferry"
    assert script.exists(), f"{script} missing: install the project (pip install -e .)"
    good = GOOD.parent / "listeners.toml"
    proc = subprocess.run([str(script), "config", "check", "--config", str(good)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, f"{good}: ok\n")
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    for command in ("serve", "config", "user", "alias", "domain"):
        assert f"  {command} " in help_text


def test_start_warns_about_a_missing_postmaster(tmp_path: Path) -> None:
    """RFC 5321 §4.5.1: postmaster must exist in every local domain; the server says so at
    start (stderr and the log), with the command that fixes it, until it does."""
    daemon = Daemon(tmp_path / "d")
    warning = ("no mailbox or alias for postmaster@example.test (RFC 5321 requires one):"
               " mailferry alias add postmaster@example.test you@example.test")
    with daemon:
        daemon.wait_line(f"Warning: {warning}")
    assert f"mailferry: warning: {warning}" in (daemon.root / "stderr.log").read_text()
    daemon.add_user("admin@example.test")
    daemon.cli("alias", "add", "postmaster@example.test", "admin@example.test")
    (daemon.root / "stderr.log").write_text("")
    with daemon:
        daemon.wait_line("mailferry started")
    assert "postmaster" not in (daemon.root / "stderr.log").read_text()


def test_config_check_loads_the_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ok(tmp_path, "tls", "selfsigned", "--hostname", "mx.example.test", "--out", str(certs))
    config = tmp_path / "mailferry.toml"
    config.write_text(f'[tls]\ncertificate = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n')
    assert ok(tmp_path, "config", "check", "--config", str(config)) == f"{config}: ok\n"
    (certs / "key.pem").write_text("not a key\n")
    assert fails(tmp_path, "config", "check", "--config", str(config)).startswith(
        f"{config}: tls: {certs / 'cert.pem'} / {certs / 'key.pem'}: cannot load the certificate"
        " and key (")
