"""``mailferry report``: messages received over TLS and in authenticated sessions, and the top
authenticated users, by the record path (report.Report.add) and the lean path (tally.py), on a
log of plain, STARTTLS, implicit-TLS and authenticated sessions (tests/support/tls_auth_log.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mailferry.tracker import cli, reader, tally
from mailferry.tracker import report as report_mod
from tests.support import tls_auth_log


def _log(tmp_path: Path) -> Path:
    p = tmp_path / "s20261128.log"
    p.write_text("".join(tls_auth_log.lines()))
    return p


def _expected_counts(data: dict) -> None:
    want = tls_auth_log.EXPECTED
    t = data["totals"]
    for key in ("messages_received", "messages_tls", "messages_authenticated"):
        assert t[key] == want[key], key
    assert data["top_authenticated_users"] == want["top_authenticated_users"]


def test_record_path_counts_tls_and_authenticated_messages(tmp_path: Path) -> None:
    rep = report_mod.Report()
    stats = cli.run(reader.discover([str(_log(tmp_path))]), rep.add)
    data = rep.as_dict(stats)
    _expected_counts(data)
    assert data["log"]["unparsed"] == 0


def test_lean_path_counts_the_same(tmp_path: Path) -> None:
    rep, stats = tally.run(reader.discover([str(_log(tmp_path))]))
    _expected_counts(rep.as_dict(stats))


def test_records_carry_what_the_report_counts(tmp_path: Path) -> None:
    """Per message, as the trace shows it: the refused login then bob's (session 2006) names
    bob; the STARTTLS between two messages (2003) makes only the second one TLS."""
    got: list[dict] = []
    cli.run(reader.discover([str(_log(tmp_path))]), got.append)
    by_id = {r["msgid"]: r for r in got if r["type"] == "message"}
    assert (by_id["MFTA000004"]["tls"], by_id["MFTA000005"]["tls"]) == (False, True)
    assert by_id["MFTA000007"]["auth_user"] == "bob@example.com"
    assert by_id["MFTA000010"]["auth_user"] is None  # mallory's login was refused
    assert by_id["MFTA000006"]["tls"] is False  # STARTTLS answered 454
    # bob's refused recipient: a rejected message of an authenticated session, not received
    [rejected] = [r for r in got if r["type"] == "message" and r["status"] == "rejected"]
    assert rejected["auth_user"] == "bob@example.com" and rejected["tls"] is True


def test_report_json_and_text_show_the_new_counts(tmp_path: Path) -> None:
    log = str(_log(tmp_path))
    res = CliRunner().invoke(cli.report, ["--json", log])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    _expected_counts(data)
    res = CliRunner().invoke(cli.report, [log])
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "messages received over TLS" in text and "messages received authenticated" in text
    tls_row = next(x for x in text.splitlines() if "messages received over TLS" in x)
    assert tls_row.split()[-1] == str(tls_auth_log.EXPECTED["messages_tls"])
    top = text.split("Top authenticated users\n", 1)[1].splitlines()
    assert top[0].split() == ["3", "alice@example.com"]
    assert top[1].split() == ["2", "bob@example.com"]


def test_a_report_without_logins_has_no_users_section() -> None:
    rep = report_mod.Report()
    data = rep.as_dict()
    assert data["top_authenticated_users"] == []
    text = report_mod.render(data)
    assert "Top authenticated users" not in text
    row = next(x for x in text.splitlines() if "messages received authenticated" in x)
    assert row.split()[-1] == "0"
