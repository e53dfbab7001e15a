"""Reading log files: discovery and order, gzip, globs, stdin, --follow; and fuzzed input, which
must never crash the reader or the reconstruction."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailferry.tracker import cli, reader, render
from mailferry.tracker.reconstruct import Reconstructor, Source

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = (DATA / "logs" / "s20261128.log").read_text().splitlines(keepends=True)


def test_discover_orders_by_date_then_rotation(tmp_path: Path) -> None:
    for name in ("s20261129-01.log.gz", "s20261129.log", "s20261128.log", "notes.txt",
                 "s20261130-02.log", "s20261130-10.log"):
        (tmp_path / name).write_text("")
    names = [f.name for f in reader.discover([str(tmp_path)])]
    assert names == ["s20261128.log", "s20261129.log", "s20261129-01.log.gz",
                     "s20261130-02.log", "s20261130-10.log"]
    globbed = [f.name for f in reader.discover([str(tmp_path / "s2026113*.log"),
                                                str(tmp_path / "s20261128.log")])]
    assert globbed == ["s20261128.log", "s20261130-02.log", "s20261130-10.log"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        reader.discover([str(tmp_path / "nothing-here*.log")])


def test_dates_come_from_names() -> None:
    assert reader.day_of("/x/s20261128-03.log.gz")[1] == 3
    assert reader.day_of("s20261128.log")[0] == reader.day_of("120261128.log")[0]
    assert reader.day_of("s20261399.log") == (None, 0)  # no such date
    assert reader.day_of("icewarp.log") == (None, 0)


def test_gzip_is_recognised_by_content(tmp_path: Path) -> None:
    plain, packed = tmp_path / "s20261128.log", tmp_path / "renamed.log"
    plain.write_text("".join(SAMPLE))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = list(cli.records([str(plain)]))
    b = list(cli.records([str(packed)], date_override=reader.day_of(str(plain))[0]))
    same = json.dumps(a).replace('"file":"s20261128.log"', '"file":"renamed.log"')
    assert a and json.loads(same.replace(": ", ":")) is not None
    assert json.dumps(a).replace("s20261128.log", "renamed.log") == json.dumps(b)


def test_non_utf8_bytes_do_not_stop_the_reader(tmp_path: Path) -> None:
    p = tmp_path / "s20261128.log"
    p.write_bytes(b"".join(x.encode() for x in SAMPLE[:40]) +
                  b"192.0.2.1       [0001] 10:00:00 <<< EHLO caf\xe9\xff\n" +
                  b"".join(x.encode() for x in SAMPLE[40:]))
    got: list[dict] = []
    stats = cli.run(reader.discover([str(p)]), got.append)
    assert stats["lines"] == len(SAMPLE) + 1 and got


def test_follow_reads_appended_lines_and_the_next_day(tmp_path: Path) -> None:
    first = tmp_path / "s20261128.log"
    first.write_text("".join(SAMPLE[:20]))
    [lf] = reader.discover([str(tmp_path)])
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 50

    gen = reader.follow(str(tmp_path), lf, lf.size(), poll=0.001, stop=stop)
    with first.open("a") as f:
        f.write("".join(SAMPLE[20:30]) + SAMPLE[30][:10])  # and half a line
    source, lines = next(gen)
    assert source.name == "s20261128.log" and list(lines) == SAMPLE[20:30]
    with first.open("a") as f:
        f.write(SAMPLE[30][10:])
    assert list(next(gen)[1]) == [SAMPLE[30]]
    (tmp_path / "s20261129.log").write_text("".join(SAMPLE[31:35]))
    source, lines = next(gen)
    assert source.name == "s20261129.log" and list(lines) == SAMPLE[31:35]


def test_follow_through_the_cli_runner_emits_updates(tmp_path: Path) -> None:
    log = tmp_path / "s20261128.log"
    end = SAMPLE.index(next(x for x in SAMPLE if "[1308] 10:25:05 Disconnected" in x)) + 1
    log.write_text("".join(SAMPLE[:end]))
    rest = SAMPLE[end:end + 20]  # the delivery of MF7Q2K9X3A
    got: list[dict] = []
    state = {"n": 0}

    def stop() -> bool:
        state["n"] += 1
        if state["n"] == 2:
            with log.open("a") as f:
                f.write("".join(rest))
        return state["n"] > 20

    cli.run(reader.discover([str(log)]), got.append, follow=True, follow_dir=str(tmp_path),
            stop=stop)
    stories = [r for r in got if r["msgid"] == "MF7Q2K9X3A"]
    assert [r["final"] for r in stories] == [False, True]  # received, then delivered
    assert stories[-1]["recipients"][0]["queued_as"] == "4F2A1"


# -- fuzz ---------------------------------------------------------------------------------------
def _never_crashes(lines: list[str]) -> None:
    got: list[dict] = []
    rec = Reconstructor(got.append)
    rec.feed(lines, Source("s20261128.log", 739_000))
    rec.feed(lines[: len(lines) // 2], Source("<stdin>", None))
    rec.finish()
    for r in got:
        json.dumps(r)
        render.text(r)
    assert rec.stats.lines == len(lines) + len(lines) // 2
    explained: list[dict] = []  # --explain keeps and annotates the raw lines
    rec = Reconstructor(explained.append, explain=["MF7Q2K9X3A", "MF7Q2K9X5C"])
    rec.feed(lines, Source("s20261128.log", 739_000))
    rec.finish()
    for r in explained:
        render.explain(r)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=120), max_size=40))
def test_fuzz_random_text(lines: list[str]) -> None:
    _never_crashes([x + "\n" for x in lines])


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_fuzz_damaged_real_log(rng: random.Random) -> None:
    """Lines dropped, duplicated, swapped, cut short or garbled: a log as it really arrives."""
    lines = list(SAMPLE)
    for _ in range(rng.randrange(1, 40)):
        i = rng.randrange(len(lines))
        op = rng.randrange(5)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            k = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:k] + chr(rng.randrange(0, 0x3000)) + lines[i][k:]
    _never_crashes(lines)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_bytes_through_the_cli(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "s20261128.log"
    p.write_bytes(data)
    got: list[dict] = []
    cli.run(reader.discover([str(p)]), got.append)


class _Tty:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_progress_bar_only_on_a_terminal() -> None:
    assert not reader.Progress.wanted(_Tty(False)) and reader.Progress.wanted(_Tty(True))
    tty = _Tty(True)
    bar = reader.Progress(1000, tty)  # type: ignore[arg-type]
    bar.update(500)
    bar.update(500)  # unchanged: not redrawn
    assert tty.text.count("\r") == 1 and " 50%" in tty.text
    bar.close()
    assert tty.text.endswith("\r")
