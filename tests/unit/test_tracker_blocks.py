"""The tracker reads intrusion-prevention lines: nothing unparsed, refusals by reason code.

Both report paths (records → report.Report, and tally.py's lean path) must agree on them.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailferry import reply
from mailferry.tracker import cli, reader, tally
from mailferry.tracker import report as report_mod
from mailferry.txlog import format as fmt


def _log(tmp_path: Path) -> Path:
    ip = "192.0.2.7"
    p = fmt.prefix(ip, "1A2B")
    q = fmt.prefix(ip, "1A2C")
    r = fmt.prefix("198.51.100.9", "1A2D")
    tripped = reply.client_now_blocked("RELAY").lines[0]
    refused = reply.client_blocked("RELAY").lines[0]
    lines = [
        f"{p}10:25:01 Connected, local IP=198.51.100.5",
        f"{p}10:25:01 >>> 220 mx.example.test ESMTP mailferry; Sun, 29 Nov 2026 10:25:01 +0000",
        f"{p}10:25:01 <<< RSET",
        f"{p}10:25:01 >>> 250 2.0.0 Reset state",
        f"{p}10:25:02 {fmt.blocked(ip, 3600, 'RSET', '3 RSET commands in 600 s')}",
        f"{p}10:25:02 >>> {tripped}",
        f"{p}10:25:02 Disconnected",
        f"{q}10:31:40 Connected, local IP=198.51.100.5",
        f"{q}10:31:40 "
        + fmt.refused_blocked(ip, "2026-11-29 11:25:02", "RELAY", "20 relay attempts in 600 s"),
        f"{q}10:31:40 >>> {refused}",
        f"{q}10:31:40 Disconnected",
        f"{r}10:32:00 Connected, local IP=198.51.100.5",
        f"{r}10:32:00 {fmt.pregreet(15, 0.2, 'EHLO bot.test')}",
        f"{r}10:32:00 >>> {reply.PREGREET.lines[0]}",
        f"{r}10:32:00 Disconnected",
    ]
    path = tmp_path / "s20261129.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_block_lines_are_read_and_counted_by_reason(tmp_path: Path) -> None:
    files = reader.discover([str(_log(tmp_path))])
    rep = report_mod.Report()
    stats = cli.run(files, rep.add)
    old = rep.as_dict(stats)
    lean, lean_stats = tally.run(reader.discover([str(_log(tmp_path))]))
    new = lean.as_dict(lean_stats)
    assert json.dumps(new) == json.dumps(old)
    assert old["log"]["unparsed"] == 0
    reasons = json.dumps(old["rejection_reasons"])
    assert "554 5.7.1 Access denied: your address is blocked (RELAY)" in reasons
    assert "421 4.7.0 Your address is now blocked (RELAY), closing connection" in reasons
    assert "554 5.5.1 Protocol error: client talked before the greeting" in reasons
    assert old["totals"]["connections_rejected"] == 3


def test_block_lines_are_notes_of_their_session(tmp_path: Path) -> None:
    records: list[dict] = []
    cli.run(reader.discover([str(_log(tmp_path))]), records.append)
    by_sid = {r["session"]["sid"]: r for r in records}
    assert by_sid["1A2C"]["status"] == "rejected"
    assert by_sid["1A2C"]["reason"] == "554 5.7.1 Access denied: your address is blocked (RELAY)"
    notes = [n["text"] for n in by_sid["1A2B"]["session"]["notes"]]
    assert notes == ["Blocked 192.0.2.7 for 3600 s: RSET (3 RSET commands in 600 s)"]
    assert fmt.parse_blocked(notes[0]) == ("192.0.2.7", "RSET", "3 RSET commands in 600 s")
    assert "pregreet" in by_sid["1A2D"]["session"]["notes"][0]["text"]
