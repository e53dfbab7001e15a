"""The transaction log writer: format, day files, flushing, and never failing the mail flow."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from mailferry.txlog import format as fmt
from mailferry.txlog.writer import TxLog


def _clock(value: list[float]):
    return lambda: value[0]


def test_session_lines_parse_back_with_peer_sid_and_kinds(tmp_path: Path) -> None:
    now = [time.mktime((2026, 11, 28, 10, 25, 3, 0, 0, -1))]
    log = TxLog(tmp_path, flush_interval=0, clock=_clock(now))
    s = log.session("192.0.2.10", "1308")
    s.event(fmt.connected("198.51.100.5"))
    s.sent(["250-mx.example.test Hello", "250 SIZE 100"])
    s.received("MAIL FROM:<a@b.test>\r\nRCPT TO:<evil@x.test>")  # a forged line stays one line
    s.event(fmt.summary("a@b.test", "c@d.test", 1, 42, "00:00:01", "OK", "MF0000000001"))
    s.end()
    text = (tmp_path / "smtp" / "s20261128.log").read_text()
    lines = text.splitlines()
    assert len(lines) == 6
    parsed = [fmt.parse_line(x) for x in lines]
    assert all(p is not None and p.peer == "192.0.2.10" and p.sid == "1308" for p in parsed)
    assert [p.kind for p in parsed if p] == [
        fmt.Kind.CONNECTED, fmt.Kind.SENT, fmt.Kind.SENT, fmt.Kind.RECEIVED, fmt.Kind.SUMMARY,
        fmt.Kind.DISCONNECTED]
    assert lines[0].startswith("192.0.2.10      [1308] 10:25:03 Connected, local IP=")
    assert "\\x0d\\x0a" in lines[3]  # CR/LF from the network are escaped, never written raw


def test_lines_go_to_the_file_of_their_day(tmp_path: Path) -> None:
    now = [time.mktime((2026, 11, 28, 23, 59, 59, 0, 0, -1))]
    log = TxLog(tmp_path, flush_interval=0, clock=_clock(now))
    s = log.session("192.0.2.1", "0001")
    s.text("before midnight")
    now[0] += 2
    s.text("after midnight")
    log.close()
    assert "before midnight" in (tmp_path / "smtp" / "s20261128.log").read_text()
    after = (tmp_path / "smtp" / "s20261129.log").read_text()
    assert "after midnight" in after and "before midnight" not in after


def test_nothing_written_until_flush(tmp_path: Path) -> None:
    log = TxLog(tmp_path, flush_interval=0)
    log.system("buffered")
    assert not (tmp_path / "smtp").exists() or not any((tmp_path / "smtp").iterdir())
    log.flush()
    [path] = (tmp_path / "smtp").iterdir()
    assert path.read_text().startswith("SYSTEM          [0000] ")


def test_write_failure_reported_once_never_raises(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # A regular file where the log folder should be: mkdir fails for root too.
    (tmp_path / "smtp").write_text("not a folder")
    log = TxLog(tmp_path, flush_interval=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            log.system("mail keeps flowing")
            log.flush()  # must not raise
    errors = [r for r in caplog.records if "transaction log write failed" in r.message]
    assert len(errors) == 1
    # once the disk is fixed, the buffered lines are written and recovery is reported
    (tmp_path / "smtp").unlink()
    log.system("fixed")
    log.flush()
    text = next((tmp_path / "smtp").iterdir()).read_text()
    assert text.count("mail keeps flowing") == 3 and "fixed" in text
    assert any("work again" in r.message for r in caplog.records)
