"""web.index.LogIndex: the log read piece by piece gives what one full tracker run gives."""

from __future__ import annotations

import itertools
import shutil
from datetime import date
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.tracker import render
from mailferry.tracker.cli import records as tracker_records
from mailferry.txlog import format as fmt
from mailferry.web.index import LogIndex

LOGS = Path(__file__).parents[1] / "data" / "logs"
DAY = date(2026, 11, 28)
GOLDEN = (LOGS / "s20261128.log").read_bytes()


def _index(directory: Path, days: int = 1) -> LogIndex:
    return LogIndex(directory, days=days, today=lambda: DAY)


def _final_by_id(records: list[dict]) -> dict[str, dict]:
    return {r["msgid"]: r for r in records if r["msgid"] and r["final"]}


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_whole_file_matches_a_tracker_run(tmp_path: Path) -> None:
    shutil.copy(LOGS / "s20261128.log", tmp_path)
    index = _index(tmp_path)
    index.refresh()
    expected = _final_by_id(list(tracker_records([str(tmp_path / "s20261128.log")])))
    got = _final_by_id(list(index.records.values()))
    assert expected and got == expected


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, len(GOLDEN)), max_size=6))
def test_appended_in_pieces_matches_a_tracker_run(cuts: list[int]) -> None:
    """The log grows by arbitrary byte pieces (even mid-line): same records, same line numbers."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s20261128.log"
        path.write_bytes(b"")
        index = _index(Path(tmp))
        for piece in _pieces(GOLDEN, cuts):
            with path.open("ab") as f:
                f.write(piece)
            index.refresh()
        expected = _final_by_id(list(tracker_records([str(path)])))
        assert _final_by_id(list(index.records.values())) == expected
        assert index.stats["lines"] == GOLDEN.count(b"\n")


def test_session_lines_are_read_back_with_notes(tmp_path: Path) -> None:
    shutil.copy(LOGS / "s20261128.log", tmp_path)
    index = _index(tmp_path)
    index.refresh()
    text = (tmp_path / "s20261128.log").read_text().splitlines()
    assert index.sessions
    for (file, line), entry in index.sessions.items():
        lines = index.session_lines(entry.session)
        sess = entry.session
        assert lines and lines[0][0] == line == sess["line"] and file == sess["file"]
        for n, raw, note in lines:
            assert text[n - 1] == raw
            peer, sid, _, _ = fmt.split_line(raw)
            assert (peer, sid) == (sess["peer"], sess["sid"])
            assert note == render.annotate(raw, sess["direction"])
        if sess["complete"]:
            assert lines[-1][1].endswith("Disconnected")


def test_an_open_session_is_live_until_its_disconnected(tmp_path: Path) -> None:
    path = tmp_path / "s20261128.log"
    head = [
        "192.0.2.7       [00A1] 10:00:00 Connected, local IP=198.51.100.5",
        "192.0.2.7       [00A1] 10:00:00 >>> 220 mx.example.test ESMTP",
        "192.0.2.7       [00A1] 10:00:01 <<< EHLO client.example.org",
        "192.0.2.7       [00A1] 10:00:01 >>> 250 mx.example.test Hello",
    ]
    path.write_text("\n".join(head) + "\n")
    index = _index(tmp_path)
    index.refresh()
    [(sess, ids, count)] = index.open_sessions()
    assert (sess["peer"], sess["sid"], sess["helo"], ids, count) == (
        "192.0.2.7", "00A1", "client.example.org", [], 0)
    assert index.session("s20261128.log", 1).record_status == "open"
    with path.open("a") as f:
        f.write("192.0.2.7       [00A1] 10:00:02 <<< QUIT\n"
                "192.0.2.7       [00A1] 10:00:02 >>> 221 bye\n"
                "192.0.2.7       [00A1] 10:00:02 Disconnected\n")
    index.refresh()
    assert index.open_sessions() == []
    entry = index.session("s20261128.log", 1)
    assert entry.record_status == "no-mail" and not entry.bad
    assert len(index.session_lines(entry.session)) == 7


def test_only_recent_days_are_read(tmp_path: Path) -> None:
    shutil.copy(LOGS / "s20261128.log", tmp_path / "s20261127.log")
    shutil.copy(LOGS / "s20261128.log", tmp_path / "s20261128.log")
    index = _index(tmp_path, days=1)
    index.refresh()
    assert {f for f, _ in index.sessions} == {"s20261128.log"}


def test_a_truncated_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "s20261128.log"
    shutil.copy(LOGS / "s20261128.log", path)
    index = _index(tmp_path)
    index.refresh()
    before = index.stats["lines"]
    path.write_bytes(GOLDEN[:GOLDEN.index(b"\n") + 1])
    index.refresh()  # smaller than what was read: read from the start
    assert index.stats["lines"] == before + 1


def test_memory_is_bounded(tmp_path: Path) -> None:
    shutil.copy(LOGS / "s20261128.log", tmp_path)
    index = LogIndex(tmp_path, days=1, max_records=3, max_sessions=4, today=lambda: DAY)
    index.refresh()
    assert len(index.records) == 3 and len(index.sessions) == 4


def test_missing_directory_is_empty(tmp_path: Path) -> None:
    index = _index(tmp_path / "nothing")
    index.refresh()
    assert not index.records and not index.sessions and index.open_sessions() == []
