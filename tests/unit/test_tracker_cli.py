"""`mailferry trace` / `mailferry report` through click's CliRunner: filters, formats, --explain,
--strict, the default log directory; and the tracker's import boundary."""

from __future__ import annotations

import ast
import gzip
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailferry.tracker import cli

DATA = Path(__file__).resolve().parent.parent / "data"
LOGS = str(DATA / "logs")
SRC = Path(cli.__file__).resolve().parent


def _run(cmd, *args: str, input: str | None = None):
    res = CliRunner().invoke(cmd, list(args), input=input)
    return res


def _ids(*args: str) -> list[str | None]:
    res = _run(cli.trace, "--json", LOGS, *args)
    assert res.exit_code == 0, res.output
    return [json.loads(x)["msgid"] for x in res.stdout.splitlines()]


def _senders(*args: str) -> list[str | None]:
    res = _run(cli.trace, "--json", LOGS, *args)
    assert res.exit_code == 0, res.output
    return [json.loads(x)["sender"] for x in res.stdout.splitlines()]


@pytest.mark.parametrize(("args", "want"), [
    (("--from", "alice@"), ["MF7Q2K9X3A"]),
    (("--from", "alice@example.org"), ["MF7Q2K9X3A"]),
    (("--from", "@example.com"), ["MF7Q2K9X4B"]),
    (("--to", "@example.net", "--status", "delivered"), ["MF7Q2K9X3A", "MF7Q2K9X8F"]),
    (("--to", "frank@example.org"), []),  # the bounce's recipient: told inside MF7Q2K9X5C
    (("--id", "mf7q2k9x3a"), ["MF7Q2K9X3A"]),
    (("--id", "MF7Q2K9X6D"), ["MF7Q2K9X5C"]),  # a bounce's ID finds the original's story
    (("--id", "9A8B7C"), ["MF7Q2K9X4B"]),  # so does the remote server's queue ID
    (("--status", "failed"), ["MF7Q2K9X5C", "MF7Q2K9XA1"]),
    (("--status", "bounced"), ["MF7Q2K9X5C", "MF7Q2K9XA1"]),
    (("--status", "deferred"), ["MF7Q2K9X4B", "MF7Q2K9XC3"]),  # once, or still
    (("--ip", "192.0.2.20"), ["MF7Q2K9X4B"]),
    (("--ip", "203.0.113.8"), ["MF7Q2K9X5C"]),  # the MX that refused ghost@
    (("--ip", "2001:db8::/32"), ["MF7Q2K9X7E"]),
    (("--since", "2026-11-29", "--status", "delivered"), ["MF7Q2K9X8F"]),  # relayed on the 29th
    (("--since", "11:00", "--until", "11:11", "--from", "*@example.*"),
     ["MF7Q2K9X5C", "MF7Q2K9X4B"]),
])
def test_filters(args: tuple[str, ...], want: list[str]) -> None:
    got = [i for i in _ids(*args) if i]
    assert sorted(got) == sorted(want)


def test_rejections_have_no_msgid_but_are_found() -> None:
    assert _senders("--status", "rejected", "--from", "*bad*") == ["offers@bad.example"]
    assert "olga@example.org" in _senders("--status", "aborted")


def test_since_filter_is_a_time_of_day_for_plain_times() -> None:
    recs = [json.loads(x) for x in _run(cli.trace, "--json", LOGS, "--since", "14:00")
            .stdout.splitlines()]
    assert recs and all(r["end"][11:] >= "14:00:00" for r in recs)
    assert "MF7Q2K9X7E" in [r["msgid"] for r in recs]


def test_bad_filter_values_are_usage_errors() -> None:
    for args in (("--ip", "not-an-ip"), ("--since", "noon"), ("--status", "lost")):
        res = _run(cli.trace, LOGS, *args)
        assert res.exit_code == 2, args
        assert args[0] in res.output


def test_text_output_and_json_array() -> None:
    res = _run(cli.trace, LOGS, "--id", "MF7Q2K9X3A")
    assert res.exit_code == 0
    assert "bob@example.net" in res.stdout and "queued as 4F2A1" in res.stdout
    arr = json.loads(_run(cli.trace, LOGS, "--format", "json").stdout)
    assert len(arr) == len(_ids())
    assert json.loads(_run(cli.trace, LOGS, "--format", "json", "--id", "NOPE").stdout) == []


def test_explain_tells_the_whole_story_in_order() -> None:
    res = _run(cli.trace, LOGS, "--explain", "MF7Q2K9X5C")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for note in ("the client identified itself as relay.example.org",
                 "accepted for delivery as MF7Q2K9X5C", "looked up MX for example.net",
                 "could not connect to mx1.example.net (203.0.113.7): connection refused",
                 "remote server refused for good", "a bounce (MF7Q2K9X6D)",
                 "remote server accepted: queued as 77C3D"):
        assert note in out, note
    # received, then the failed attempt, then the bounce's delivery: in that order
    assert out.index("session 1500") < out.index("session 1501") < out.index("session 1502")
    assert "1308" not in out  # no other session's lines


def test_explain_unknown_message_exits_1() -> None:
    res = _run(cli.trace, LOGS, "--explain", "MFNOSUCH0000")
    assert res.exit_code == 1 and "no message MFNOSUCH0000" in res.output


def test_stdin_and_strict(tmp_path: Path) -> None:
    text = (DATA / "logs" / "s20261128.log").read_text()
    res = _run(cli.trace, "--json", "--date", "2026-11-28", "-", input=text)
    assert res.exit_code == 0
    assert "2026-11-28T10:25:03" in res.stdout
    bad = tmp_path / "s20261130.log"
    bad.write_text(text + "this is not a log line\n")
    res = _run(cli.trace, "--json", str(bad))
    assert res.exit_code == 0 and "1 line(s) not understood" in res.stderr
    res = _run(cli.trace, "--strict", str(bad))
    assert res.exit_code == 1 and "s20261130.log:246" in res.output


def test_report_text_and_json() -> None:
    res = _run(cli.report, LOGS, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    t = data["totals"]
    assert t["messages_received"] == 8  # accepted messages with their receiving session
    assert t["recipients_failed"] == 2 and t["bounces_sent"] == 2
    assert t["messages_rejected"] == 2 and t["connections_rejected"] == 1
    assert t["recipients_refused"] == 2 and t["deferrals"] == 2
    assert data["delivery_delay"]["count"] == 3
    assert data["delivery_delay"]["p50"] == 3 and data["delivery_delay"]["max"] == 902
    assert ["alice@example.org", 1] in data["top_senders"]
    assert data["per_hour"]["2026-11-28 10"] == {"received": 1, "delivered": 1}
    assert ["554 5.7.1 Relay access denied", 1] in data["rejection_reasons"]
    assert data["log"]["sessions_in"] == 12 and data["log"]["sessions_out"] == 9
    text = _run(cli.report, LOGS).stdout
    assert "messages received" in text and "Rejection reasons" in text and "p95" in text
    filtered = json.loads(_run(cli.report, LOGS, "--json", "--from", "dave@").stdout)
    assert filtered["totals"]["messages_received"] == 1


def test_default_log_dir_from_the_default_config(tmp_path: Path, monkeypatch) -> None:
    smtp = tmp_path / "var" / "log" / "smtp"
    smtp.mkdir(parents=True)
    shutil.copy(DATA / "logs" / "s20261128.log", smtp)
    with gzip.open(smtp / "s20261127.log.gz", "wt") as f:
        f.write("")
    monkeypatch.chdir(tmp_path)
    res = _run(cli.trace, "--json", "--id", "MF7Q2K9X3A")
    assert res.exit_code == 0, res.output
    assert len(res.stdout.splitlines()) == 1
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    res = _run(cli.trace)
    assert res.exit_code == 2 and "no log directory" in res.output


def test_tracker_never_imports_the_server() -> None:
    """It runs on a copied log file on a laptop (architecture.md)."""
    forbidden = ("mailferry.inbound", "mailferry.delivery", "mailferry.queue", "mailferry.smtp",
                 "mailferry.daemon", "mailferry.verify", "mailferry.dns")
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
