"""``mailferry report``'s lean path (tracker/tally.py) against the record path it replaces.

The lean path must give exactly the report that reconstruct.py's records give to report.Report:
on the golden logs, on a generated log like the benchmark's, on damaged and fuzzed logs, with
small memory bounds (evictions), across files and midnights, with --strict. Each test builds
both reports from the same files and compares their JSON documents.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench.trace_bench import generate
from mailferry.tracker import cli, reader, tally
from mailferry.tracker import report as report_mod
from mailferry.tracker.reconstruct import Reconstructor, UnreadableLine
from tests.support import tls_auth_log

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = (DATA / "logs" / "s20261128.log").read_text().splitlines(keepends=True)
# Sessions with STARTTLS, implicit TLS, refused and accepted logins (TLS / AUTH counts).
TLS_AUTH = tls_auth_log.lines()
GOLDEN = [[DATA / "logs"]] + [[p] for p in sorted((DATA / "icewarp").glob("*.log"))]


def _record_path(files: list[reader.LogFile], **kw: object) -> dict:
    rep = report_mod.Report()
    stats = cli.run(files, rep.add, **kw)  # type: ignore[arg-type]
    return rep.as_dict(stats)


def _lean_path(files: list[reader.LogFile], **kw: object) -> dict:
    rep, stats = tally.run(files, **kw)  # type: ignore[arg-type]
    return rep.as_dict(stats)


def _both(paths: list[Path | str], **kw: object) -> tuple[dict, dict]:
    files = reader.discover([str(p) for p in paths])
    return _record_path(files, **kw), _lean_path(files, **kw)


def _assert_same(old: dict, new: dict) -> None:
    for key in old:  # one key at a time: a failure names the part that differs
        assert new[key] == old[key], key
    assert json.dumps(new) == json.dumps(old)  # same keys, same order


@pytest.mark.parametrize("paths", GOLDEN, ids=["logs"] + [p[0].stem for p in GOLDEN[1:]])
def test_golden_logs(paths: list[Path]) -> None:
    _assert_same(*_both(paths))


def test_tls_and_auth_sessions(tmp_path: Path) -> None:
    log = tmp_path / "s20261128.log"
    log.write_text("".join(TLS_AUTH))
    old, new = _both([log])
    assert old["totals"]["messages_tls"] == tls_auth_log.EXPECTED["messages_tls"]
    _assert_same(old, new)


def test_generated_log_like_the_benchmark(tmp_path: Path) -> None:
    """50,000 lines of interleaved served and delivery sessions, refusals, greylisting and
    retries, bounces: every number and every top list (ties included) is the same."""
    log = tmp_path / "s20261128.log"
    generate(str(log), 50_000, seed=11)
    old, new = _both([log])
    assert old["totals"]["messages_received"] > 1000 and old["delivery_delay"]["count"] > 1000
    _assert_same(old, new)


def test_generated_log_undated_split_and_gzipped(tmp_path: Path) -> None:
    """The same story told by an undated log (days from midnights) and by a log cut in two
    files of the next days, the second gzipped (sessions open across files, day markers)."""
    log = tmp_path / "s20261128.log"
    generate(str(log), 20_000, seed=5)
    lines = log.read_text().splitlines(keepends=True)
    undated = tmp_path / "undated.log"
    undated.write_text("".join(lines))
    _assert_same(*_both([undated]))
    half = len(lines) // 2
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "s20261128.log").write_text("".join(lines[:half]))
    with gzip.open(tmp_path / "split" / "s20261129.log.gz", "wt") as f:
        f.write("".join(lines[half:]))
    _assert_same(*_both([tmp_path / "split"]))
    _assert_same(*_both([undated], date_override=739_000))


def test_small_memory_bounds_evict_the_same_way() -> None:
    """With a few open sessions and unfinished messages allowed, both paths evict the same
    ones, in the same order (counted in log.evicted)."""
    files = reader.discover([str(DATA / "logs")])
    evicted = 0
    for max_open, max_pending in ((1, 1), (2, 1), (1, 5), (5, 1), (3, 2)):
        rep = report_mod.Report()
        rec = Reconstructor(rep.add, max_open=max_open, max_pending=max_pending)
        new = report_mod.Report()
        lean = tally.Tally(new, max_open=max_open, max_pending=max_pending)
        for (source, lines), (_, batches) in zip(reader.sources(files),
                                                 reader.sources(files, batched=True),
                                                 strict=True):
            rec.feed(lines, source)
            lean.feed(batches, source)
        rec.finish()
        lean.finish()
        assert lean.stats.as_dict() == rec.stats.as_dict()
        _assert_same(rep.as_dict(), new.as_dict())
        evicted += rec.stats.evicted
    assert evicted > 10


def test_strict_stops_at_the_same_line(tmp_path: Path) -> None:
    bad = tmp_path / "s20261130.log"
    bad.write_text("".join(SAMPLE[:100]) + "this is not a log line\n" + "".join(SAMPLE[100:]))
    errors = []
    for path in (_record_path, _lean_path):
        with pytest.raises(UnreadableLine) as e:
            path(reader.discover([str(bad)]), strict=True)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "s20261130.log:101" in errors[0]


def test_cli_report_takes_the_lean_path_and_prints_the_same(monkeypatch) -> None:
    """Without filters `report` counts through tally.py; its JSON is the record path's."""
    calls = []
    monkeypatch.setattr(tally, "run", lambda *a, _run=tally.run, **kw: calls.append(1) or
                        _run(*a, **kw))
    res = CliRunner().invoke(cli.report, ["--json", str(DATA / "logs")])
    assert res.exit_code == 0, res.output
    assert calls == [1]
    assert json.loads(res.stdout) == _record_path(reader.discover([str(DATA / "logs")]))
    # A filter needs the records: the record path, not the lean one.
    res = CliRunner().invoke(cli.report, ["--json", "--from", "dave@", str(DATA / "logs")])
    assert res.exit_code == 0 and calls == [1]


# -- damaged and fuzzed logs --------------------------------------------------------------------
def _compare_text(tmp_path_factory, text: str, name: str = "s20261128.log") -> None:
    p = tmp_path_factory.mktemp("tally") / name
    p.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _assert_same(*_both([p]))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_fuzz_damaged_real_log(tmp_path_factory, rng: random.Random) -> None:
    """Lines dropped, duplicated, swapped, cut short, garbled or retimed, sessions cut off
    (no Disconnected) and SIDs reused: a log as it really arrives."""
    lines = list(SAMPLE) + TLS_AUTH
    for _ in range(rng.randrange(1, 30)):
        i = rng.randrange(len(lines))
        op = rng.randrange(8)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)] + "\n"
        elif op == 4:
            k = rng.randrange(len(lines[i]) + 1)
            c = chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0x3000))))
            lines[i] = lines[i][:k] + c + lines[i][k:]
        elif op == 5:  # another stamp: a single-digit hour, hour 24, a date, garbage
            stamp = rng.choice(("9:05:03", "24:00:01", "Sat, 28 Nov 2026 10:25:03 +0000",
                                "1x:00:00", "10:25:03"))
            lines[i] = lines[i][:23] + stamp + lines[i][31:]
        elif op == 6 and "Disconnected" in lines[i]:
            del lines[i]
        elif op == 7:  # a body the interpreter must read another way
            lines[i] = lines[i][:32] + rng.choice((
                "<<< BDAT 100 LAST", ">>> 250 2.1.5 <x@y>... Recipient ok", "<<< RSET",
                "*** <a@b> <c@d> 1 10 00:00:01 OK MFX1 extra", "<<< AUTH LOGIN",
                ">>> 334 VXNlcm5hbWU6", "<<< ****", "<<< 12 bytes (overall data transfer "
                "speed=12 B/s)", "Connected, local IP=1.2.3.4", "DNS query MX x failed: NO",
                ">>> 421 4.7.0 bye", "", "<<< STARTTLS", ">>> 220 2.0.0 Ready to start TLS",
                "TLS established: TLSv1.3 TLS_AES_128_GCM_SHA256", "TLS handshake failed: eof",
                "Authenticated as eve@example.com (PLAIN)", ">>> 235 2.7.0 Authentication "
                "successful", "Authentication failed for eve (LOGIN)", ">>> 535 5.7.8 no",
                "<<< AUTH PLAIN")) + "\n"
    _compare_text(tmp_path_factory, "".join(lines))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(SAMPLE + TLS_AUTH), max_size=80), st.booleans())
def test_fuzz_shuffled_sample_lines(tmp_path_factory, lines: list[str], dated: bool) -> None:
    """Real lines in any order and number (sessions interleaved, reused, cut)."""
    _compare_text(tmp_path_factory, "".join(lines), "s20261128.log" if dated else "x.log")


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=80), max_size=30))
def test_fuzz_random_text(tmp_path_factory, lines: list[str]) -> None:
    text = "\n".join(lines)
    _compare_text(tmp_path_factory, text.encode("utf-8", "replace").decode("utf-8"))


# -- the usual session shapes against the line-by-line interpretation ---------------------------
def _same_reading(shape: tuple | None, lines: tuple) -> bool:
    """A shape's reading equals the interpreter's; its notes may be left out when nothing can
    read them (no bounce link in them, no message from <>)."""
    if shape is None:
        return True  # not of the shape: the interpreter reads it
    shape, lines = list(shape), list(lines)
    if not shape[3] and not any("ounce" in n or "DSN" in n for n in lines[3]) and \
            not any(t[tally.T_SENDER] == "" for t in lines[2]):
        lines[3] = []
    return repr(shape) == repr(lines)


def _shaped(buf: list[str]) -> tuple | None:
    base = 739_948 * 86400
    if buf[0][32] == "C":
        return tally._served(buf, base)
    return tally._delivery(buf, base) if buf[0][32] == "D" else None


def test_usual_shapes_read_every_generated_session_like_the_interpreter(tmp_path: Path) -> None:
    log = tmp_path / "s20261128.log"
    generate(str(log), 20_000, seed=3)
    sessions: list[tuple] = []
    lean = tally.Tally(report_mod.Report())
    ended = lean._ended

    def keep(s: list, buf: list, disconnected: bool) -> None:
        sessions.append((list(s), list(buf), disconnected))
        ended(s, buf, disconnected)

    lean._ended = keep  # type: ignore[method-assign]
    for source, batches in reader.sources(reader.discover([str(log)]), batched=True):
        lean.feed(batches, source)
    lean.finish()
    shaped = 0
    for s, buf, disconnected in sessions:
        got = _shaped(buf) if disconnected and not s[tally.S_MIXED] else None
        if got is not None:
            shaped += 1
            assert _same_reading(got, tally._interpret(s, buf, disconnected)), buf
    assert shaped > 0.95 * len(sessions)


P = "192.0.2.154     [0009] 10:00:0{} "
_ODD_NOTES = ("Bounce MFB0000001 for MFA0000001: 550", "DSN for MFA0000002", "<abc>-def",
              "TLS established: TLSv1.3 X", "Authenticated as eve@example.com (PLAIN)",
              "TLS handshake failed: eof", "user not authenticated: eve",
              "Connecting to mx [1.2.3.4]:25", "Connected", "Start of mail processing",
              "DNS query MX x: y (10)", "*** junk", "  ", "x B/s)")
_ODD_REPLIES = ("550 5.1.1 no", "451 4.7.1 later", "354 go", "250-more", "221 bye", "2", "",
                "12 bytes (overall data transfer speed=1 B/s)", "250 x B/s)")


def _usually(usual: str, *odd: str) -> st.SearchStrategy[str]:
    """Mostly the usual line, sometimes an odd one: most sessions keep the shape."""
    return st.sampled_from([usual] * (6 * len(odd) + 6) + list(odd))


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_usual_shapes_read_like_the_interpreter_on_random_sessions(data) -> None:
    """Sessions of (nearly) the usual shapes, with fields drawn at random, odd ones included:
    the shape either declines a session or reads it exactly as _interpret does."""
    d = data.draw
    served = d(st.booleans())
    stamp = st.sampled_from("0123456789")
    lines: list[str] = []

    def add(body: str) -> None:
        lines.append(P.format(d(stamp)) + body + "\n")

    ours, theirs = (">>> ", "<<< ") if served else ("<<< ", ">>> ")
    notes = st.lists(_usually("Client 192.0.2.1 reverse DNS: x", *_ODD_NOTES), max_size=2)
    reply = _usually("250 2.1.5 ok", *_ODD_REPLIES)
    if served:
        add(d(_usually("Connected, local IP=198.51.100.5", "Connected, local IP= ",
                       "Connected")))
    else:
        for n in d(notes):
            add(n)
        add(d(_usually("DNS query MX example.org: mx.example.org (10)",
                       "DNS query MX example.org failed: SERVFAIL", "DNS query MX")))
        for a in d(st.lists(_usually(
                "Connecting to mx.example.org [192.0.2.25]:25",
                "Connecting to mx.example.org [192.0.2.26]:25 failed: refused",
                "Connecting to bad host"), min_size=1, max_size=2)):
            add(a)
        add("Connected")
    add(ours + d(_usually("220 hello", "220 x B/s)", "421 busy")))
    add(theirs + d(_usually("EHLO x", "helo x", "HELO", "AUTH LOGIN")))
    for _ in range(d(st.integers(0, 2))):
        add(ours + "250-ext")
    add(ours + d(_usually("250 hello", *_ODD_REPLIES)))
    for n in d(notes):
        add(n)
    add(theirs + d(_usually("MAIL FROM:<a@example.org> SIZE=10", "mail from:<>",
                            "MAIL FROM:<a@b", "MAIL FROM:a@b")))
    for n in d(notes):
        add(n)
    add(ours + d(_usually("250 2.1.0 ok", *_ODD_REPLIES)))
    for _ in range(d(st.integers(0, 3))):
        add(theirs + d(_usually("RCPT TO:<b@example.net>", "RCPT TO:<B@Example.NET>",
                                "rcpt to:<>", "RCPT TO:<c@example.com>")))
        add(ours + d(st.one_of(reply, st.just("250 2.1.5 ok; will forward"))))
    if d(st.booleans()):
        add(theirs + "DATA")
        add(ours + d(_usually("354 go", "354-go", "554 no")))
        add(theirs + d(_usually("120 bytes (overall data transfer speed=120 B/s)",
                                "120 bytes")))
        if served:
            add(d(_usually("Start of mail processing", "Start")))
        else:
            add(ours + d(_usually("250 2.0.0 queued as X", *_ODD_REPLIES)))
        for _ in range(d(st.integers(1, 3))):
            add("*** " + d(_usually(
                "<a@example.org> <b@example.net> 1 120 00:00:01 OK MF0000000001",
                "<a@example.org> <B@example.net> 2 121 00:00:01 DEFERRED MF0000000001",
                "<> <c@example.com> 1 5 00:00:00 FAILED MF0000000002",
                "<a@example.org> <b@example.net> 1 120 00:00:01 REJECTED",
                "<a@example.org> <b@example.net> x 120 00:00:01 OK MF1")))
        if served:
            add(ours + d(_usually(
                "250 2.6.0 120 bytes received in 00:00:01; Message id MF0000000001 accepted",
                "250 ok", "451 4.3.0 try later", "554 5.7.1 no")))
        for n in d(notes):
            add(n)
    add(theirs + d(_usually("QUIT", "RSET")))
    if d(st.booleans()):
        add(ours + d(_usually("221 bye", *_ODD_REPLIES)))
    add("Disconnected")
    s = [23, (739_948, "10:00:00"), served, "connected" if served else "text", "192.0.2.154",
         "0009", "s20261128.log", 1, False]
    try:
        reading = tally._interpret(s, lines, True)
    except tally._Unusual:
        reading = None
    shape = _shaped(lines)
    event("read by the shape" if shape is not None else "left to the interpreter")
    if shape is not None:
        assert reading is not None and _same_reading(shape, reading), "".join(lines)
