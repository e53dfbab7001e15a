"""The ``mailferry`` command: parse arguments, call one function, map the outcome to an exit code.

Where: the top of the import graph, next to ``daemon``. Commands are nouns then verbs (``serve``,
``config check``, ``user add`` …); ``cli`` is the group other modules add their commands to.

Must not: hold logic of its own (it calls config, verify.users, daemon) or show a traceback for an
expected failure: errors are one line, ``mailferry: error: …``, on stderr with exit status 1
(2 for a usage mistake, as is usual).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mailferry.config import Config, ConfigError, default_config, load_config
from mailferry.control import render as control_render
from mailferry.control.client import ControlClientError, request
from mailferry.inbound.blocks import BlockStore, BlockStoreError
from mailferry.inbound.guard import Block, Guard, canonical_ip
from mailferry.tracker.cli import report, trace
from mailferry.verify.users import Directory, DirectoryError

F = TypeVar("F", bound=Callable[..., Any])
# `mailferry` alone prints the help; click >= 8.2 signals that with this UsageError subclass.
_NoArgsIsHelp: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())
_CONFIG_KEY = "mailferry.config_path"


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    # --config is accepted both before the command (on the group) and after it; the one given
    # last on the command line, i.e. the command's own, wins.
    if value is not None:
        ctx.meta[_CONFIG_KEY] = value


def config_option(func: F) -> F:
    """Add ``--config FILE`` to a command (the group has it too). Read it with ``get_config()``."""
    return click.option(
        "--config",
        "-c",
        type=click.Path(path_type=Path, dir_okay=False),
        callback=_remember_config,
        expose_value=False,
        is_eager=True,
        help="Configuration file (default: built-in defaults, data in ./var).",
    )(func)


def config_path() -> Path | None:
    """The --config given to the group or the current command, if any."""
    return click.get_current_context().meta.get(_CONFIG_KEY)


def get_config() -> Config:
    """Load the --config file, or the embedded default when none was given."""
    path = config_path()
    return default_config() if path is None else load_config(path)


def _directory() -> Directory:
    return Directory.from_config(get_config())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailferry")
@config_option
def cli() -> None:
    """mailferry: an SMTP mail server whose transaction log shows what your mail is doing."""


@cli.command()
@config_option
def serve() -> None:
    """Run the mail server until stopped (TERM drains, HUP reopens logs and reloads)."""
    config = get_config()
    from mailferry.daemon import serve as run  # lazily: admin commands need none of the server

    code = run(config)
    if isinstance(code, int) and code:
        sys.exit(code)


@cli.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@config_option
def config_check() -> None:
    """Validate a configuration file: prints "FILE: ok", or the error with its line."""
    path = config_path()
    if path is None:
        raise click.UsageError("give the file to check: --config FILE")
    try:
        config = load_config(path)
    except ConfigError as err:
        # Just the "FILE:LINE: key: problem" line, in the format editors jump to.
        click.echo(str(err), err=True)
        sys.exit(1)
    if config.tls.enabled and not config.tls.self_signed:
        # `serve` would stop on a certificate it cannot load: say so now, not at the restart.
        from mailferry.tls import TlsError, server_context  # lazily: cryptography is slow

        try:
            server_context(config.tls)
        except TlsError as err:
            click.echo(f"{path}: tls: {err}", err=True)
            sys.exit(1)
    click.echo(f"{path}: ok")


@cli.group()
def user() -> None:
    """Local users: who receives mail here, and who may log in."""


@user.command("add")
@click.argument("address")
@click.option("--password", "-p", help="Login password (shows in `ps`: prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@config_option
def user_add(address: str, password: str | None, password_stdin: bool) -> None:
    """Add a user. Without a password it receives mail but cannot log in."""
    if password is not None and password_stdin:
        raise click.UsageError("give --password or --password-stdin, not both")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    with _directory() as directory:
        directory.add_user(address, password)


@user.command("list")
@config_option
def user_list() -> None:
    """List users, one address a line."""
    with _directory() as directory:
        _print_lines(directory.users())


@user.command("remove")
@click.argument("address")
@config_option
def user_remove(address: str) -> None:
    """Remove a user (its mailbox on disk is left alone)."""
    with _directory() as directory:
        directory.remove_user(address)


@cli.group()
def alias() -> None:
    """Aliases: an address that forwards to one or more others."""


@alias.command("add")
@click.argument("address")
@click.argument("targets", nargs=-1, required=True)
@config_option
def alias_add(address: str, targets: Sequence[str]) -> None:
    """Add targets to an alias (creating it if needed)."""
    with _directory() as directory:
        directory.add_alias(address, targets)


@alias.command("list")
@config_option
def alias_list() -> None:
    """List aliases: "address: target, target"."""
    with _directory() as directory:
        _print_lines(f"{a}: {', '.join(t)}" for a, t in directory.aliases().items())


@alias.command("remove")
@click.argument("address")
@config_option
def alias_remove(address: str) -> None:
    """Remove an alias with all its targets."""
    with _directory() as directory:
        directory.remove_alias(address)


@cli.group()
def domain() -> None:
    """Local domains (besides those in the config file's [domains] local)."""


@domain.command("add")
@click.argument("name")
@config_option
def domain_add(name: str) -> None:
    """Make a domain local: its mail is delivered here."""
    with _directory() as directory:
        directory.add_domain(name)


@domain.command("list")
@config_option
def domain_list() -> None:
    """List local domains, from the config file and from the user directory."""
    with _directory() as directory:
        _print_lines(directory.domains())


@domain.command("remove")
@click.argument("name")
@config_option
def domain_remove(name: str) -> None:
    """Remove a local domain that has no users or aliases left."""
    with _directory() as directory:
        directory.remove_domain(name)


@cli.group()
def queue() -> None:
    """The queue of the running server: list, show, flush, hold, release, delete, bounce."""


def _control(op: str, **args: Any) -> Any:
    """One operation on the running server (through its control socket)."""
    return request(get_config().data_dir, op, **args)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of the table.")
@config_option
def queue_list(as_json: bool) -> None:
    """Every queued message: state, age, size, next attempt, recipients, last error."""
    messages = _control("list")
    if as_json:
        _echo_json(messages)
    else:
        click.echo(control_render.queue_list(messages, time.time()), nl=False)


@queue.command("show")
@click.argument("msgid")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@config_option
def queue_show(msgid: str, as_json: bool) -> None:
    """One message: envelope, headers, per-recipient history and its transaction-log story."""
    message = _control("show", id=msgid)
    if as_json:
        _echo_json(message)
    else:
        click.echo(control_render.queue_show(message, time.time()), nl=False)


@queue.command("flush")
@click.argument("msgid", required=False)
@click.option("--domain", "-d", metavar="DOMAIN", help="Only messages waiting for this domain.")
@config_option
def queue_flush(msgid: str | None, domain: str | None) -> None:
    """Retry now: one message, one domain's messages, or every message not on hold."""
    result = _control("flush", id=msgid, domain=domain)
    click.echo(f"{result['flushed']} message(s) will be tried now")


@queue.command("hold")
@click.argument("msgid")
@config_option
def queue_hold(msgid: str) -> None:
    """Keep a message in the queue without trying it (until release; survives a restart)."""
    result = _control("hold", id=msgid)
    later = " after the delivery attempt in flight" if result["attempt_in_flight"] else ""
    click.echo(f"{result['id']} is on hold{later}")


@queue.command("release")
@click.argument("msgid")
@config_option
def queue_release(msgid: str) -> None:
    """Take a message off hold; it is tried at once."""
    result = _control("release", id=msgid)
    click.echo(f"{result['id']} released: delivery is tried now")


@queue.command("delete")
@click.argument("msgid")
@config_option
def queue_delete(msgid: str) -> None:
    """Remove a message for good, without telling the sender (the log records it)."""
    result = _control("delete", id=msgid)
    click.echo(f"{result['id']} deleted")


@queue.command("bounce")
@click.argument("msgid")
@config_option
def queue_bounce(msgid: str) -> None:
    """Return a message to its sender now (a delivery status notice) and remove it."""
    result = _control("bounce", id=msgid)
    notice = f"notice {result['dsn']} sent to the sender" if result["dsn"] else \
        "no notice: the message has the null sender"
    click.echo(f"{result['id']} bounced ({len(result['bounced'])} recipient(s)); {notice}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@config_option
def status(as_json: bool) -> None:
    """The running server: uptime, open sessions, queue size by state, recent errors."""
    result = _control("status")
    if as_json:
        _echo_json(result)
    else:
        click.echo(control_render.status(result), nl=False)


@cli.group()
def block() -> None:
    """Blocked client addresses (intrusion prevention): list, add, remove. Works while the
    server runs: it notices a change within a fraction of a second."""


def _blocks(config: Config) -> BlockStore:
    return BlockStore.for_data_dir(config.data_dir, durable=True)


def _ip_argument(text: str) -> str:
    try:
        return canonical_ip(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an IP address", param_hint="IP") from None


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _block_dict(b: Block) -> dict[str, object]:
    return {"ip": b.ip, "reason": b.reason, "detail": b.detail, "created": _when(b.created),
            "expires": _when(b.expires), "created_unix": b.created, "expires_unix": b.expires}


@block.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
@config_option
def block_list(as_json: bool) -> None:
    """List blocked addresses: IP, reason code, until when, why."""
    with _blocks(get_config()) as store:
        blocks = store.list()
    if as_json:
        click.echo(json.dumps([_block_dict(b) for b in blocks], indent=2))
        return
    _print_lines(f"{b.ip}  {b.reason}  until {_when(b.expires)}  {b.detail}" for b in blocks)


@block.command("add")
@click.argument("ip")
@click.option("--for", "seconds", type=click.FloatRange(min=0, min_open=True),
              help="Seconds (default: [protection] block_time).")
@click.option("--reason", "text", default="", help="Why (shown in the list and the log).")
@config_option
def block_add(ip: str, seconds: float | None, text: str) -> None:
    """Block an address: its next connection is refused with 554."""
    key = _ip_argument(ip)
    config = get_config()
    if any(ipaddress.ip_address(key) in net for net in config.relay.networks):
        click.echo(f"mailferry: warning: {key} is in [relay] networks, which are never blocked;"
                   " the block takes effect only if you remove it from there", err=True)
    with _blocks(config) as store:
        store.add(Guard(config.protection).manual(key, seconds, text))


@block.command("remove")
@click.argument("ip")
@config_option
def block_remove(ip: str) -> None:
    """Lift the block of an address."""
    key = _ip_argument(ip)
    with _blocks(get_config()) as store:
        if store.remove(key) is None:
            raise click.ClickException(f"{key} is not blocked")


@cli.group()
def tls() -> None:
    """TLS certificates for the listeners."""


@tls.command("selfsigned")
@click.option("--hostname", required=True, help="The name clients connect to (also in the SAN).")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True, help="Folder for cert.pem and key.pem.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True,
              help="Validity in days.")
def tls_selfsigned(hostname: str, out: Path, days: int) -> None:
    """Write a throwaway self-signed certificate (cert.pem, key.pem mode 0600) for a first run.

    Clients will not trust it: use one from a real CA (e.g. Let's Encrypt) for real mail."""
    from mailferry.tls import write_self_signed  # lazily: cryptography is slow to import

    cert, key = write_self_signed(out, hostname, days)
    click.echo(f"wrote {cert} and {key}\n"
               f"[tls]\ncertificate = \"{cert.resolve()}\"\nkey = \"{key.resolve()}\"")


def _print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the command, turn failures into one line on stderr and an exit status."""
    try:
        # standalone_mode=False: click hands errors back to us instead of printing them itself.
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="mailferry",
                        standalone_mode=False)
    except (ConfigError, DirectoryError, ControlClientError, BlockStoreError,
            sqlite3.Error) as err:
        # The expected failures, from our commands and from those other modules add.
        _error(str(err), 1)
    except _NoArgsIsHelp as err:
        err.show()
        sys.exit(err.exit_code)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        _error(f"{err.format_message()}{hint}", err.exit_code)
    except click.ClickException as err:
        _error(err.format_message(), err.exit_code)
    except click.Abort:
        _error("interrupted", 130)
    except OSError as err:
        _error(f"{f'{err.filename}: ' if err.filename else ''}{err.strerror or err}", 1)
    except Exception as err:
        # A bug, not a user mistake: still one line, unless asked for the whole story.
        if os.environ.get("MAILFERRY_DEBUG"):
            raise
        _error(f"unexpected {type(err).__name__}: {err} (MAILFERRY_DEBUG=1 shows where)", 1)
    sys.exit(code if isinstance(code, int) else 0)


# Reading logs is its own package (it runs on a copied log file, without a server).
cli.add_command(trace)
cli.add_command(report)


def _error(message: str, code: int) -> NoReturn:
    click.echo(f"mailferry: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
