"""Finding and reading transaction-log files: names, dates, rotations, gzip, stdin and --follow.

Where it sits: the first step of ``mailferry trace`` / ``report``. It turns the command line's
files, directories, globs and ``-`` into an ordered list of sources (by the date in the file name,
then the rotation number, so a message received at 23:59 and relayed at 00:01 reads as one story)
and yields each source's lines. It must not: parse lines (txlog.format does), fail on bytes that
are not UTF-8 (they are replaced, and the line is then counted as unparsed or read as text), or
write to stdout (the progress bar goes to stderr, and only when stderr is a terminal).
"""

from __future__ import annotations

import glob
import gzip
import io
import itertools
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mailferry.tracker.reconstruct import Source
from mailferry.txlog import format as fmt

STDIN = "-"
_CHUNK = 1 << 18  # readlines() hint: lines reach the reconstructor in batches of ~256 KiB


@dataclass(frozen=True)
class LogFile:
    path: str  # a path, or "-" for stdin
    day: int | None  # date ordinal from the name
    part: int

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else os.path.basename(self.path)

    def size(self) -> int:
        try:
            return 0 if self.path == STDIN else os.path.getsize(self.path)
        except OSError:
            return 0


def day_of(name: str) -> tuple[int | None, int]:
    """The date ordinal and rotation number a log file's name carries (``s20261128-01.log``)."""
    m = fmt.LOG_NAME_RE.match(os.path.basename(name))
    if m is None:
        return None, 0
    d = m["date"]
    try:
        return date(int(d[:4]), int(d[4:6]), int(d[6:])).toordinal(), int(m["part"] or 0)
    except ValueError:
        return None, 0


def _is_log_name(name: str) -> bool:
    return fmt.LOG_NAME_RE.match(name) is not None


def discover(args: Iterable[str], default_dir: Path | None = None) -> list[LogFile]:
    """Files, directories (their log files), globs and ``-`` → files in reading order.

    Raises FileNotFoundError naming the argument that matched nothing.
    """
    paths: list[str] = []
    args = list(args)
    if not args and default_dir is not None:
        args = [str(default_dir)]
    for arg in args:
        if arg == STDIN:
            paths.append(STDIN)
        elif os.path.isdir(arg):
            names = sorted(n for n in os.listdir(arg) if _is_log_name(n))
            paths.extend(os.path.join(arg, n) for n in names)
        elif os.path.exists(arg):
            paths.append(arg)
        else:
            matched = sorted(glob.glob(arg))
            if not matched:
                raise FileNotFoundError(f"{arg}: no such file, directory or matching files")
            paths.extend(p for p in matched if os.path.isfile(p))
    files = []
    for i, p in enumerate(dict.fromkeys(paths)):  # the same file named twice is read once
        day, part = day_of(p) if p != STDIN else (None, 0)
        files.append((day if day is not None else -1, part, i, LogFile(p, day, part)))
    # Undated names keep their command-line order, before the dated ones (sorted by date).
    return [f for *_, f in sorted(files, key=lambda t: t[:3])]


def open_text(path: str) -> io.TextIOBase:
    """Open a log for reading text: gzip by its magic number (whatever the name), UTF-8."""
    if path == STDIN:
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    raw = open(path, "rb")  # noqa: SIM115 - handed to the wrapper, closed with it
    magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors="replace")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def _position(f: io.TextIOBase) -> int:
    """Bytes of the underlying file read so far (compressed bytes for gzip)."""
    buf = getattr(f, "buffer", None)
    inner = getattr(buf, "fileobj", None) or buf
    try:
        return inner.tell() if inner is not None else 0
    except (OSError, ValueError):
        return 0


def batches_of(f: io.TextIOBase, progress: Callable[[int], None] | None = None,
               on_error: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """The lines of an open file in lists of ~256 KiB, reporting progress per list. A damaged
    file (a cut gzip stream, an I/O error) ends there: ``on_error`` hears why."""
    while True:
        try:
            batch = f.readlines(_CHUNK)
        except (OSError, EOFError, zlib.error) as e:
            if on_error is not None:
                on_error(f"{e.__class__.__name__}: {e}")
            return
        if not batch:
            return
        if progress is not None:
            progress(_position(f))
        yield batch


def lines_of(f: io.TextIOBase, progress: Callable[[int], None] | None = None,
             on_error: Callable[[str], None] | None = None) -> Iterator[str]:
    """The lines of an open file, read in batches (cheap per line); see :func:`batches_of`."""
    return itertools.chain.from_iterable(batches_of(f, progress, on_error))


def sources(files: list[LogFile], *, date_override: int | None = None,
            progress: Progress | None = None, on_error: Callable[[str], None] | None = None,
            batched: bool = False) -> Iterator[tuple[Source, Iterator]]:
    """Each file as a (Source, lines) pair, opened one at a time. A file that cannot be opened
    or read to its end is reported to ``on_error`` (named) and skipped or cut short.
    ``batched``: the lines come in lists (:func:`batches_of`), for readers that loop over a
    list faster than over a chained iterator."""
    done = 0
    for lf in files:
        err = (lambda why, name=lf.name: on_error(f"{name}: {why}")) if on_error else None
        try:
            f = open_text(lf.path)
        except OSError as e:
            if err is None:
                raise
            err(str(e))
            continue
        with f:
            day = lf.day if lf.day is not None else date_override
            cb = None
            if progress is not None:
                base = done
                cb = lambda pos, base=base: progress.update(base + pos)  # noqa: E731
            read = batches_of if batched else lines_of
            yield Source(lf.name, day), read(f, cb, err)
        done += lf.size()


def follow(directory: str | None, current: LogFile | None, offset: int = 0, *,
           poll: float = 0.5, stop: Callable[[], bool] = lambda: False,
           ) -> Iterator[tuple[Source, Iterator[str]]]:
    """``current`` from byte ``offset`` on, then new lines as they are appended, switching to a
    newer day's (or rotation's) file in ``directory`` once ``current`` is drained. Partial lines
    wait for their newline. Ends when ``stop()`` says so (the CLI: never; ^C ends it)."""
    while not stop():
        if directory:
            newer = [f for f in discover([directory]) if current is None or
                     (f.day or 0, f.part) > (current.day or 0, current.part)]
            if newer and (current is None or current.size() <= offset):
                current, offset = newer[0], 0
        if current is None:
            time.sleep(poll)
            continue
        lines, offset = _read_from(current.path, offset)
        if lines:
            yield Source(current.name, current.day), iter(lines)
        else:
            time.sleep(poll)


def is_plain(lf: LogFile) -> bool:
    """A file that can be followed by byte offsets (not stdin, not gzip)."""
    if lf.path == STDIN:
        return False
    try:
        with open(lf.path, "rb") as f:
            return f.read(2) != b"\x1f\x8b"
    except OSError:
        return False


_FOLLOW_CHUNK = 1 << 23  # a big file being followed is read 8 MiB at a time


def _read_from(path: str, offset: int) -> tuple[list[str], int]:
    """Complete lines appended since ``offset`` (plain files only) and the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(_FOLLOW_CHUNK)
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    if end == 0:
        return [], offset
    text = data[:end].decode("utf-8", errors="replace")
    return text.splitlines(keepends=True), offset + end


class Progress:
    """A one-line progress bar on stderr (only built when stderr is a terminal)."""

    def __init__(self, total: int, stream: io.TextIOBase | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._shown = -1

    @staticmethod
    def wanted(stream: object | None = None) -> bool:
        s = stream or sys.stderr
        return bool(getattr(s, "isatty", lambda: False)())

    def update(self, done: int) -> None:
        pct = min(100, done * 100 // self.total)
        if pct == self._shown:
            return
        self._shown = pct
        bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
        rate = done / max(time.monotonic() - self.started, 1e-6) / 1e6
        self.stream.write(f"\rreading [{bar}] {pct:3d}%  {rate:6.1f} MB/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r" + " " * 60 + "\r")
        self.stream.flush()
