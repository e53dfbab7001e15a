"""Reconstruction: what the tracker makes of sessions, checked against what the logs say."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.tracker import cli
from mailferry.tracker.reconstruct import Reconstructor, Source
from mailferry.txlog import format as fmt

LOGS = Path(__file__).resolve().parent.parent / "data" / "logs"
DAY = 739_000  # any date ordinal


def _all() -> dict:
    got: list[dict] = []
    cli.run(cli.reader.discover([str(LOGS)]), got.append)
    return {r["msgid"]: r for r in got if r["msgid"]} | {"_all": got}  # type: ignore[dict-item]


def _rcpt(r: dict, address: str) -> dict:
    return next(x for x in r["recipients"] if x["address"] == address)


def test_relay_local_and_refused_recipients_of_one_message() -> None:
    r = _all()["MF7Q2K9X3A"]
    assert r["status"] == "delivered" and r["final"]
    assert r["sender"] == "alice@example.org" and r["size"] == 2804 and r["size_declared"] == 2804
    assert r["session"]["peer"] == "192.0.2.10" and r["session"]["helo"] == "client.example.org"
    bob = _rcpt(r, "bob@example.net")
    assert (bob["route"], bob["status"], bob["queued_as"], bob["host"], bob["ip"]) == (
        "relay", "delivered", "4F2A1", "mx1.example.net", "203.0.113.7")
    assert bob["delay"] == 2  # received 10:25:05, remote 250 at 10:25:07
    nobody = _rcpt(r, "nobody@example.com")
    assert nobody["status"] == "refused" and nobody["reply"].startswith("550 5.1.1")
    assert _rcpt(r, "carol@example.com")["route"] == "local"
    [d] = r["deliveries"]
    assert d["session"]["mx"][0]["domain"] == "example.net"
    assert [h["host"] for h in d["session"]["mx"][0]["hosts"]] == ["mx1.example.net",
                                                                  "mx2.example.net"]


def test_deferred_then_delivered_on_retry() -> None:
    r = _all()["MF7Q2K9X4B"]
    erin = _rcpt(r, "erin@example.org")
    assert (erin["status"], erin["attempts"], erin["deferrals"]) == ("delivered", 2, 1)
    assert erin["delay"] == 15 * 60 + 2
    first, second = r["deliveries"]
    assert first["status"] == "deferred" and first["next_retry"] == "2026-11-28 11:15:04"
    assert first["recipients"][0]["reply"].startswith("451 4.7.1")
    assert second["status"] == "delivered" and second["queued_as"] == "9A8B7C"
    sess = r["session"]
    assert sess["tls"] and sess["auth"] == {"mechanism": "LOGIN", "user": "dave@example.com",
                                            "ok": True}


def test_failed_delivery_and_its_bounce_explicit_link() -> None:
    r = _all()["MF7Q2K9X5C"]
    assert r["status"] == "failed" and r["final"]
    [d] = r["deliveries"]
    assert [a["error"] for a in d["session"]["attempts"]] == ["connection refused", None]
    assert d["ip"] == "203.0.113.8"  # the MX that answered, not the one that refused
    assert _rcpt(r, "ghost@example.net")["remote_reply"].startswith("550 5.1.1")
    b = r["bounce"]
    assert b["msgid"] == "MF7Q2K9X6D" and b["sender"] == "" and b["status"] == "delivered"
    assert b["recipients"][0]["address"] == "frank@example.org"
    assert "MF7Q2K9X6D" not in _all()  # told inside the original's story, not on its own


def test_bounce_linked_by_its_session_naming_the_original() -> None:
    r = _all()["MF7Q2K9XA1"]
    assert r["bounce"]["msgid"] == "MF7Q2K9XB2"
    assert r["bounce"]["recipients"][0]["queued_as"] == "C0FFEE"


def test_a_story_across_midnight_and_files() -> None:
    r = _all()["MF7Q2K9X8F"]
    assert r["session"]["file"] == "s20261128.log" and r["session"]["complete"]
    assert r["session"]["end"] == "2026-11-29T00:00:00"
    assert r["deliveries"][0]["session"]["file"] == "s20261129.log"
    assert _rcpt(r, "judy@example.net")["delay"] == 3


def test_incomplete_sessions_are_kept_and_marked() -> None:
    everything = _all()
    z = everything["MF7Q2K9X0Z"]  # the file begins in the middle of this session
    assert z["session"]["missing"] == ["start"] and z["status"] == "delivered"
    open_at_end = [r for r in everything["_all"] if r["session"] and
                   r["session"]["missing"] == ["end"]]
    assert [r["sender"] for r in open_at_end] == ["rita@example.org"]
    assert open_at_end[0]["status"] == "incomplete"


def test_deferred_at_end_of_log_is_not_final() -> None:
    r = _all()["MF7Q2K9XC3"]
    assert r["status"] == "deferred" and not r["final"]
    noah = _rcpt(r, "noah@nodomain.example")
    assert noah["next_retry"] == "2026-11-29 09:45:02" and noah["remote_reply"] == "SERVFAIL"


def test_rejected_and_aborted_transactions() -> None:
    recs = _all()["_all"]
    by_sender = {}
    for r in recs:
        by_sender.setdefault(r["sender"], []).append(r)
    [bad] = by_sender["offers@bad.example"]
    assert bad["status"] == "rejected" and bad["reason"].startswith("550 5.1.8")
    assert [r["status"] for r in by_sender["olga@example.org"]] == ["rejected", "aborted"]
    [refused] = [r for r in recs if r["type"] == "session" and r["status"] == "rejected"]
    assert refused["session"]["peer"] == "198.51.100.77" and refused["reason"].startswith("421")


# -- interleaving -------------------------------------------------------------------------------
def _served(peer: str, sid: str, sender: str, rcpts: list[str], msgid: str) -> list[str]:
    lines = [fmt.connected("198.51.100.5"), fmt.sent("220 mail.example.com ESMTP"),
             fmt.received("EHLO c.example.org"), fmt.sent("250-mail.example.com Hello"),
             fmt.sent("250 PIPELINING"), fmt.received(f"MAIL FROM:<{sender}>"),
             fmt.sent(f"250 2.1.0 <{sender}>... Sender ok")]
    for r in rcpts:
        lines += [fmt.received(f"RCPT TO:<{r}>"),
                  fmt.sent(f"250 2.1.5 <{r}>... Recipient ok; will forward")]
    lines += [fmt.received("DATA"), fmt.sent("354 go ahead"), fmt.data_bytes("<<<", 900, 1),
              fmt.START_PROCESSING]
    lines += [fmt.summary(sender, r, len(rcpts), 895, "00:00:01", "OK", msgid) for r in rcpts]
    lines += [fmt.sent(f"250 2.6.0 895 bytes received in 00:00:01; Message id {msgid} accepted "
                       "for delivery"), fmt.received("QUIT"), fmt.sent("221 bye"),
              fmt.DISCONNECTED]
    return [fmt.line(peer, sid, "10:00:00", b) for b in lines]


def _delivery(sid: str, sender: str, rcpt: str, msgid: str, status: str,
              extra: list[str] = ()) -> list[str]:
    domain = rcpt.split("@")[1]
    ok = status == "OK"
    lines = [fmt.dns_mx(domain, [(f"mx.{domain}", 10)]),
             fmt.connecting(f"mx.{domain}", "203.0.113.9"), fmt.CONNECTED,
             fmt.received("220 mx ESMTP"), fmt.sent("EHLO mail.example.com"),
             fmt.received("250 mx"), fmt.sent(f"MAIL FROM:<{sender}>"),
             fmt.received("250 2.1.0 Ok"), fmt.sent(f"RCPT TO:<{rcpt}>"),
             fmt.received("250 2.1.5 Ok" if ok else "550 5.1.1 unknown user")]
    if ok:
        lines += [fmt.sent("DATA"), fmt.received("354 go"), fmt.data_bytes(">>>", 895, 1),
                  fmt.received("250 2.0.0 Ok: queued as AB12")]
    lines += [fmt.summary(sender, rcpt, 1, 895, "00:00:01", status, msgid), *extra,
              fmt.sent("QUIT"), fmt.received("221 bye"), fmt.DISCONNECTED]
    return [fmt.line("198.51.100.5", sid, "10:00:00", b) for b in lines]


def _sessions() -> list[tuple[list[str], tuple[int, str] | None]]:
    """Sessions, each with what must come first: (session index, text of its line)."""
    a = "MF0000000A01"
    b = "MF0000000B02"
    bounce = "MF0000000C03"
    return [
        (_served("192.0.2.1", "0001", "x@example.org", ["p@example.net", "q@example.edu"], a),
         None),
        (_delivery("0101", "x@example.org", "p@example.net", a, "OK"), (0, "accepted")),
        (_delivery("0102", "x@example.org", "q@example.edu", a, "OK"), (0, "accepted")),
        (_served("192.0.2.2", "0001", "y@example.org", ["r@example.net"], b), None),
        (_delivery("0201", "y@example.org", "r@example.net", b, "FAILED",
                   [fmt.bounce_created(bounce, b)]), (3, "accepted")),
        (_delivery("0202", "", "y@example.org", bounce, "OK"), (4, "Bounce")),
    ]


def _interleave(rng: random.Random) -> list[str]:
    sessions = _sessions()
    pos = [0] * len(sessions)
    out: list[str] = []
    released = [dep is None for _, dep in sessions]
    while any(p < len(s) for (s, _), p in zip(sessions, pos, strict=True)):
        ready = [i for i, (s, _) in enumerate(sessions) if released[i] and pos[i] < len(s)]
        i = rng.choice(ready)
        line = sessions[i][0][pos[i]]
        pos[i] += 1
        out.append(line + "\n")
        for j, (_, dep) in enumerate(sessions):
            if dep and dep[0] == i and dep[1] in line:
                released[j] = True
    return out


def _stories(lines: list[str]) -> list[dict]:
    got: list[dict] = []
    rec = Reconstructor(got.append)
    rec.feed(lines, Source("s20261128.log", DAY))
    rec.finish()

    def strip(x):  # line numbers (and so the order of simultaneous deliveries) differ between
        if isinstance(x, dict):  # interleavings; nothing else may
            d = {k: strip(v) for k, v in x.items() if k != "line"}
            if "deliveries" in d:
                d["deliveries"].sort(key=lambda d: d["session"]["sid"])
            return d
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return sorted((strip(r) for r in got), key=lambda r: (r["msgid"] or "", r["start"] or ""))


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_interleaving_does_not_change_the_stories(rng: random.Random) -> None:
    sequential = _stories([line + "\n" for s, _ in _sessions() for line in s])
    assert _stories(_interleave(rng)) == sequential
    assert [r["msgid"] for r in sequential] == ["MF0000000A01", "MF0000000B02"]
    assert all(r["final"] for r in sequential)
    assert sequential[1]["bounce"]["msgid"] == "MF0000000C03"


def test_delivery_closing_before_its_receiving_session_is_still_one_story() -> None:
    s = _sessions()
    served = s[0][0]
    lines = served[:-3] + s[1][0] + s[2][0] + served[-3:]  # client stays connected meanwhile
    [r] = _stories([x + "\n" for x in lines])
    assert r["status"] == "delivered" and len(r["deliveries"]) == 2 and r["session"]


# -- session splitting, days, bounds ------------------------------------------------------------
def _feed(lines: list[str], day: int | None = DAY, **kw) -> tuple[list[dict], Reconstructor]:
    got: list[dict] = []
    rec = Reconstructor(got.append, **kw)
    rec.feed([x + "\n" for x in lines], Source("x.log", day))
    rec.finish()
    return got, rec


def test_sid_reused_without_disconnected_splits_sessions() -> None:
    first = _served("192.0.2.7", "0AAA", "a@example.org", ["b@example.net"], "MF00000000D1")
    second = _served("192.0.2.7", "0AAA", "c@example.org", ["d@example.net"], "MF00000000D2")
    got, rec = _feed(first[:-1] + second)  # the first session's Disconnected is lost
    by = {r["sender"]: r for r in got}
    assert by["a@example.org"]["session"]["missing"] == ["end"]
    assert by["c@example.org"]["session"]["complete"]
    assert rec.stats.sessions_in == 2 and rec.stats.incomplete == 1


def test_undated_log_crossing_midnight() -> None:
    served = _served("192.0.2.8", "0BBB", "a@example.org", ["b@example.net"], "MF00000000E1")
    served = [x.replace("10:00:00", "23:59:59") for x in served]
    out = _delivery("0CCC", "a@example.org", "b@example.net", "MF00000000E1", "OK")
    out = [x.replace("10:00:00", "00:00:04") for x in out]
    [r], _ = _feed(served + out, day=None)
    assert r["start"] == "23:59:59" and r["recipients"][0]["delay"] == 5


def test_memory_bounds_emit_instead_of_growing() -> None:
    lines = []
    for i in range(50):  # 50 sessions that never end
        lines += _served(f"192.0.2.{i}", "0DDD", "a@example.org", ["b@example.net"],
                         f"MF{i:010d}")[:-1]
    got: list[dict] = []
    rec = Reconstructor(got.append, max_open=5, max_pending=3)
    rec.feed([x + "\n" for x in lines], Source("x.log", DAY))
    assert len(rec._open) <= 5 and len(rec._msgs) <= 4
    rec.finish()
    assert len(got) == 50 and rec.stats.evicted > 0


def test_other_logs_system_lines_and_garbage_are_counted() -> None:
    lines = ["SYSTEM [0000] 00:03:52 Forwarded mails older than 20 days",
             "Challenge [0001] 11:24:42 0.648605 1 0 23 0", "", "garbage without shape",
             "192.0.2.1       [0001] 1x:00:00 >>> 220 bad stamp"]
    got, rec = _feed(lines)
    st_ = rec.stats
    assert (st_.system, st_.foreign, st_.blank, st_.unparsed) == (1, 1, 1, 2)
    assert [e[1] for e in st_.examples] == [4, 5]
    assert got == []
