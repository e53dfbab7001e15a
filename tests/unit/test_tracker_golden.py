"""Golden tests: every log under tests/data/logs and tests/data/icewarp → the expected JSON.

The expected files were written by the tracker and then checked by hand against the logs (each
record's story is told line by line in the log); rewrite them after an intended change with
``MAILFERRY_REGEN_GOLDEN=1 python -m pytest tests/unit/test_tracker_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mailferry.tracker import cli

DATA = Path(__file__).resolve().parent.parent / "data"
REGEN = os.environ.get("MAILFERRY_REGEN_GOLDEN") == "1"

# (what is read, where its expected JSON lives). The synthetic logs are read together: their
# stories cross files (a message received at 23:59:59 is delivered from the next day's file).
CASES = [([DATA / "logs"], DATA / "logs" / "expected.json")] + [
    ([p], p.with_suffix(".expected.json")) for p in sorted((DATA / "icewarp").glob("*.log"))
]


def _result(paths: list[Path]) -> dict:
    got: list[dict] = []
    stats = cli.run(cli.reader.discover([str(p) for p in paths]), got.append)
    return {"records": got, "stats": stats}


@pytest.mark.parametrize(("paths", "expected"), CASES, ids=[c[1].name if c[1].parent.name ==
                                                           "icewarp" else "logs" for c in CASES])
def test_golden(paths: list[Path], expected: Path) -> None:
    got = _result(paths)
    if REGEN:
        expected.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    want = json.loads(expected.read_text())
    assert got["stats"] == want["stats"]
    assert len(got["records"]) == len(want["records"])
    for g, w in zip(got["records"], want["records"], strict=True):
        assert g == w, f"record {w['msgid'] or w['start']} differs"


def test_golden_files_are_valid_json_lines_of_the_cli() -> None:
    """`trace --json` prints the same records, one JSON document per line."""
    from click.testing import CliRunner

    res = CliRunner().invoke(cli.trace, ["--json", str(DATA / "logs")])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    want = json.loads((DATA / "logs" / "expected.json").read_text())["records"]
    assert lines == want
