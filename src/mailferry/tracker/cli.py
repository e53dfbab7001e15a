"""``mailferry trace`` and ``mailferry report``: click commands over the tracker.

Where it sits: the lead registers :data:`trace` and :data:`report` on the main ``mailferry``
group (src/mailferry/cli.py); ``python -m mailferry.tracker.cli trace …`` runs them standalone.
Thin on purpose: options → reader → reconstruct → query → render/report → exit code.
Records go to stdout; the progress bar, warnings and errors go to stderr, so a pipe or ``--json``
output never carries anything but records. It must not import the server's packages.

Exit codes: 0 done; 1 nothing matched ``--explain`` / an unreadable line with ``--strict``;
2 bad usage (click's own).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import click

from mailferry.tracker import reader, render, tally
from mailferry.tracker import report as report_mod
from mailferry.tracker.query import Query, QueryError
from mailferry.tracker.reconstruct import Reconstructor, UnreadableLine


def default_log_dir(config: Path | None) -> Path:
    """``<log dir>/smtp`` from the configuration (the embedded default without --config)."""
    from mailferry import config as cfg  # the config package is shared; import late and lightly

    conf = cfg.load_config(config) if config is not None else cfg.default_config()
    return conf.log_dir / "smtp"


def _files(logs: tuple[str, ...], config: Path | None) -> list[reader.LogFile]:
    try:
        if logs:
            files = reader.discover(logs)
        else:
            d = default_log_dir(config)
            if not d.is_dir():
                raise click.UsageError(f"no log directory {d} (name LOG files, or --config)")
            files = reader.discover([str(d)])
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from e
    if not files:
        raise click.UsageError("no transaction-log files found (names like s20261128.log)")
    return files


def _date(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).toordinal()
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: use YYYY-MM-DD", param_hint="--date") from e


def _query(**kw: str | None) -> Query:
    try:
        return Query(**kw)
    except QueryError as e:
        raise click.UsageError(str(e)) from e


def run(files: list[reader.LogFile], sink: Callable[[dict], None], *, strict: bool = False,
        explain: list[str] | None = None, follow: bool = False, date_override: int | None = None,
        follow_dir: str | None = None, stop: Callable[[], bool] = lambda: False) -> dict:
    """Read ``files`` (then follow them) into ``sink``; returns the reading statistics."""
    rec = Reconstructor(sink, explain=explain, strict=strict, updates=follow)
    damaged: list[str] = []  # files that could not be read to their end
    progress = None if follow else _progress(files)
    try:
        if follow and [f.path for f in files] == [reader.STDIN]:
            rec.feed(reader.open_text(reader.STDIN), reader.Source("<stdin>", date_override))
        else:
            # Following: the last file is read by byte offsets from its start, so that nothing
            # appended while the earlier files are read is lost or read twice.
            tail = files[-1] if follow and reader.is_plain(files[-1]) else None
            for source, lines in reader.sources(files[:-1] if tail else files,
                                                date_override=date_override,
                                                progress=progress, on_error=damaged.append):
                rec.feed(lines, source)
            if follow:
                offset = 0 if tail else files[-1].size()
                for source, lines in reader.follow(follow_dir, files[-1], offset, stop=stop):
                    rec.feed(lines, source)
    finally:
        if progress is not None:
            progress.close()
    rec.finish()
    stats = rec.stats.as_dict()
    stats["damaged_files"] = damaged
    _warn_damaged(stats)
    return stats


def _progress(files: list[reader.LogFile]) -> reader.Progress | None:
    """A progress bar when stderr is a terminal and the total size is known (not stdin)."""
    if reader.Progress.wanted() and all(f.path != reader.STDIN for f in files):
        return reader.Progress(sum(f.size() for f in files))
    return None


def _warn_damaged(stats: dict) -> None:
    for why in stats["damaged_files"]:
        click.echo(f"mailferry: {why}", err=True)


def _warn_unparsed(stats: dict) -> None:
    if stats["unparsed"]:
        first = stats["examples"][0]
        click.echo(f"mailferry: {stats['unparsed']} line(s) not understood, first at "
                   f"{first['file']}:{first['line']} (--strict makes this an error)", err=True)


_filters = [
    click.option("--from", "sender", metavar="ADDR", help="sender: a@b, a@, @domain, glob, <>"),
    click.option("--to", "rcpt", metavar="ADDR", help="any recipient (same patterns)"),
    click.option("--ip", metavar="IP[/NET]", help="client address, or a remote server's"),
    click.option("--since", metavar="TIME", help="HH:MM[:SS] or YYYY-MM-DD[ HH:MM]"),
    click.option("--until", metavar="TIME", help="HH:MM[:SS] or YYYY-MM-DD[ HH:MM]"),
    click.option("--status", metavar="STATUS",
                 help="delivered, deferred, failed (bounced), rejected, aborted, queued, "
                      "incomplete"),
]
_common = [
    click.argument("logs", nargs=-1, metavar="[LOG ...]"),
    click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
                 help="server configuration: its log directory is the default"),
    click.option("--strict", is_flag=True, help="an unreadable line is an error"),
    click.option("--date", "date_", metavar="YYYY-MM-DD",
                 help="the date of logs whose name carries none (stdin)"),
]


def _apply(options: list) -> Callable:
    def deco(f: Callable) -> Callable:
        for o in reversed(options):
            f = o(f)
        return f
    return deco


@click.command()
@_apply(_common)
@_apply(_filters)
@click.option("--id", "msgid", metavar="MSGID", help="a message ID (or a remote queue ID)")
@click.option("--json", "as_json", is_flag=True, help="same as --format jsonl")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "jsonl"]), default="text",
              show_default=True)
@click.option("--follow", "-f", is_flag=True, help="keep reading: new transactions as logged")
@click.option("--explain", metavar="MSGID", help="one message's story, line by line, annotated")
def trace(logs: tuple[str, ...], config: Path | None, strict: bool, date_: str | None,
          sender: str | None, rcpt: str | None, ip: str | None, since: str | None,
          until: str | None, status: str | None, msgid: str | None, as_json: bool, fmt: str,
          follow: bool, explain: str | None) -> None:
    """Reconstruct every transaction in transaction logs (files, dirs, globs, .gz, - for stdin)."""
    files = _files(logs, config)
    query = _query(sender=sender, rcpt=rcpt, ip=ip, msgid=explain or msgid, since=since,
                   until=until, status=status)
    out = sys.stdout
    fmt = "jsonl" if as_json else fmt
    found = 0

    def sink(record: dict) -> None:
        nonlocal found
        if not query.matches(record):
            return
        found += 1
        if explain:
            out.write(render.explain(record) + "\n")
        elif fmt == "jsonl":
            out.write(render.jsonl(record) + "\n")
        elif fmt == "json":
            out.write(("[\n" if found == 1 else ",\n") + render.jsonl(record))
        else:
            out.write(render.text(record) + "\n\n")
        if follow:
            out.flush()

    follow_dir = next((a for a in logs if Path(a).is_dir()), None) if logs else None
    if follow and follow_dir is None and logs and files[-1].path != reader.STDIN:
        follow_dir = str(Path(files[-1].path).parent)
    elif follow and not logs:
        follow_dir = str(default_log_dir(config))
    try:
        stats = run(files, sink, strict=strict, explain=[explain] if explain else None,
                    follow=follow, date_override=_date(date_), follow_dir=follow_dir)
    except UnreadableLine as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        sys.exit(130)
    if fmt == "json" and not explain:
        out.write("[]\n" if found == 0 else "\n]\n")
    _warn_unparsed(stats)
    if explain and not found:
        click.echo(f"mailferry: no message {explain} in these logs", err=True)
        sys.exit(1)


@click.command()
@_apply(_common)
@_apply(_filters)
@click.option("--json", "as_json", is_flag=True, help="the report as one JSON document")
def report(logs: tuple[str, ...], config: Path | None, strict: bool, date_: str | None,
           sender: str | None, rcpt: str | None, ip: str | None, since: str | None,
           until: str | None, status: str | None, as_json: bool) -> None:
    """Summarise transaction logs: totals, top senders/recipients/clients, rejections, delays."""
    import json

    files = _files(logs, config)
    query = _query(sender=sender, rcpt=rcpt, ip=ip, since=since, until=until, status=status)
    try:
        if query.empty:
            # No filter: the lean path counts straight from the log, without building the
            # records (the same report, ~3x faster: tally.py). Filters need the records.
            rep, stats = tally.run(files, strict=strict, date_override=_date(date_),
                                   progress=_progress(files))
            _warn_damaged(stats)
        else:
            rep = report_mod.Report()
            add = rep.add
            stats = run(files, lambda r: add(r) if query.matches(r) else None, strict=strict,
                        date_override=_date(date_))
    except UnreadableLine as e:
        raise click.ClickException(str(e)) from e
    data = rep.as_dict(stats)
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    else:
        sys.stdout.write(report_mod.render(data))
    _warn_unparsed(stats)


def records(logs: list[str], **kw: object) -> Iterator[dict]:
    """All records of some log files, for Python callers (tests, the web UI)."""
    got: list[dict] = []
    run(reader.discover(logs), got.append, **kw)  # type: ignore[arg-type]
    yield from got


@click.group()
def _main() -> None:
    """The tracker's commands, standalone (normally they are subcommands of ``mailferry``)."""


_main.add_command(trace)
_main.add_command(report)

if __name__ == "__main__":
    _main()
