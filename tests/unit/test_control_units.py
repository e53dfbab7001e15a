"""Queue control, the pure pieces: the SYSTEM line syntax, the tracker reading it, the durable
hold in the state store, the human output, message ID checking, socket naming and peer uid."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.control import render
from mailferry.control.paths import bindable
from mailferry.control.server import allowed, peer_uid
from mailferry.control.service import ControlError, _check_id, _header_block
from mailferry.queue.state import RecipientState, StateStore
from mailferry.tracker import cli as tracker_cli
from mailferry.tracker.query import Query
from mailferry.txlog import format as fmt

DATA = Path(__file__).resolve().parent.parent / "data" / "queue_control"

_ids = st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=6, max_size=20)
_actor = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
                 max_size=40).filter(lambda a: ": " not in a and a == a.strip() and
                                     not a.endswith(":"))
_detail = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(
    str.strip)


# --- the SYSTEM line ------------------------------------------------------------------------
@given(_ids, st.sampled_from(fmt.QUEUE_ACTIONS), _actor, _detail)
def test_queue_action_round_trip(msgid: str, action: str, actor: str, detail: str) -> None:
    body = fmt.queue_action(msgid, action, actor, detail)
    assert fmt.parse_queue_action(body) == (msgid, action, actor, detail)
    # … and it is an ordinary SYSTEM line of the log
    line = fmt.line(fmt.SYSTEM_PEER, fmt.SYSTEM_SID, "10:00:00", body)
    parsed = fmt.parse_line(line)
    assert parsed is not None and parsed.peer == "SYSTEM" and parsed.body == body


def test_queue_action_exact_wording() -> None:
    assert fmt.queue_action("MF7Q2K9X3A1", "held", "admin (control socket, uid 1000)") == \
        "Queue: MF7Q2K9X3A1 held by admin (control socket, uid 1000)"
    assert fmt.queue_bulk(3, "flushed", "admin (web UI)", "domain b.test") == \
        "Queue: 3 message(s) flushed by admin (web UI): domain b.test"


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(fmt.QUEUE_ACTIONS), _actor)
def test_bulk_lines_name_no_message(count: int, action: str, actor: str) -> None:
    assert fmt.parse_queue_action(fmt.queue_bulk(count, action, actor, "whole queue")) is None


@given(st.text(max_size=80))
def test_parse_queue_action_never_raises(text: str) -> None:
    got = fmt.parse_queue_action(text)
    assert got is None or text.startswith("Queue: ")


# --- the tracker reads them ---------------------------------------------------------------
def _records() -> tuple[list[dict], dict]:
    got: list[dict] = []
    stats = tracker_cli.run(tracker_cli.reader.discover([str(DATA)]), got.append)
    return got, stats


def test_tracker_attaches_queue_actions_to_the_message() -> None:
    records, stats = _records()
    assert stats["unparsed"] == 0 and stats["foreign"] == 0
    by_id = {r["msgid"]: r for r in records if r["msgid"]}
    deleted, bounced = by_id["MF2QK1EYEZM0"], by_id["MF2QK1EYEZM1"]
    assert deleted["queue_actions"] == [{
        "time": "2026-11-29T01:56:47", "action": "deleted", "by": "admin (control socket, uid 0)",
        "detail": "from <alice@a.test> to <carol@c.test>; no notice sent"}]
    assert (deleted["status"], deleted["final"]) == ("deleted", True)
    assert len(deleted["deliveries"]) == 1  # the deferred attempt before the deletion
    assert [a["action"] for a in bounced["queue_actions"]] == ["bounced"]
    assert (bounced["status"], bounced["final"]) == ("failed", True)
    # messages no administrator touched keep the documented shape
    assert all("queue_actions" not in r for r in records
               if r["msgid"] not in ("MF2QK1EYEZM0", "MF2QK1EYEZM1"))


def test_trace_text_and_status_filter_show_queue_actions() -> None:
    records, _ = _records()
    [deleted] = [r for r in records if r["msgid"] == "MF2QK1EYEZM0"]
    text = tracker_cli.render.text(deleted)
    assert "01:56:47 deleted by admin (control socket, uid 0): from <alice@a.test>" in text
    assert [r["msgid"] for r in records if Query(status="deleted").matches(r)] == \
        ["MF2QK1EYEZM0"]


# --- the durable hold ------------------------------------------------------------------------
def test_hold_is_in_the_state_file_and_the_last_mark_counts(tmp_path: Path) -> None:
    states = StateStore(tmp_path)
    assert states.load("MFA", [0]).held is False
    states.record(msgid="MFA", index=0, r=RecipientState(status="pending", attempts=1,
                                                         reply="451 busy"), durable=False)
    states.record_held("MFA", True)
    assert StateStore(tmp_path).load("MFA", [0]).held is True  # a new process reads it
    states.record_held("MFA", False)
    state = StateStore(tmp_path).load("MFA", [0])
    assert state.held is False and state.recipients[0].reply == "451 busy"
    events = states.events("MFA")
    assert [("held" in e, e.get("held")) for e in events] == [
        (False, None), (True, True), (True, False)]
    assert all(isinstance(e.get("t"), float) for e in events[1:])
    assert states.events("MFNONE") == []


def test_a_torn_last_line_does_not_undo_a_hold(tmp_path: Path) -> None:
    states = StateStore(tmp_path)
    states.record_held("MFA", True)
    with open(tmp_path / "MFA", "a") as f:
        f.write('{"held": fal')  # a crash in the middle of a release
    assert states.load("MFA", [0]).held is True
    states.record_held("MFA", False)  # appended on a line of its own
    assert states.load("MFA", [0]).held is False


# --- message IDs and headers -------------------------------------------------------------
@given(st.text(max_size=70))
def test_only_plain_ids_pass(text: str) -> None:
    try:
        got = _check_id(text)
    except ControlError as exc:
        assert str(exc).startswith("not a message ID: ")
        return
    assert got.isascii() and got.isalnum() and got == text.upper()


@pytest.mark.parametrize("bad", ["", "../x", "MF1/..", "MF 1", ".", None, 7, "A" * 65])
def test_path_like_ids_are_refused(bad: object) -> None:
    with pytest.raises(ControlError):
        _check_id(bad)


def test_header_block_stops_at_the_blank_line() -> None:
    head = b"Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n"
    assert _header_block(head) == "Received: from x\n\tby y\nSubject: hi"
    assert _header_block(b"Subject: cut") == "Subject: cut"


# --- human output ----------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600, "1h 0m"), (90061, "1d 1h"), (-5, "0s")])
def test_duration(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


def _message(**kw: object) -> dict:
    m = {"id": "MF2QK1EYEZM0", "received_at": 1000.0, "age": 312.0, "size": 2048,
         "sender": "alice@a.test", "state": "deferred", "next_attempt": 1600.0,
         "last_error": "451 4.3.0 busy", "attempts": 2,
         "recipients": [{"address": "carol@c.test", "original": "carol@c.test", "local": False,
                         "state": "deferred", "last_reply": "451 4.3.0 busy", "attempts": 2,
                         "remote": "mx.c.test [192.0.2.7]"},
                        {"address": "bob@a.test", "original": "bob@a.test", "local": True,
                         "state": "delivered", "last_reply": None, "attempts": 0,
                         "remote": None}]}
    m.update(kw)
    return m


def test_queue_list_table() -> None:
    assert render.queue_list([], 0) == "The queue is empty.\n"
    out = render.queue_list([_message(), _message(id="MF2QK1EYEZM1", state="held")], 1300.0)
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "AGE", "SIZE", "NEXT", "ATTEMPT", "TRIES",
                                "SENDER"]
    assert lines[1].split() == ["MF2QK1EYEZM0", "deferred", "5m", "12s", "2.0", "KB", "in",
                                "5m", "0s", "2", "<alice@a.test>"]
    assert lines[2] == "    -> <carol@c.test>  deferred  451 4.3.0 busy"
    assert lines[3] == "    -> <bob@a.test>  delivered"
    assert lines[4] == "    last error: 451 4.3.0 busy"
    assert "on hold" in lines[5]
    assert lines[-1] == "2 message(s), 4.0 KB: 1 deferred, 1 held"


def test_status_text() -> None:
    out = render.status({
        "pid": 42, "started_at": 0.0, "uptime": 3725.0,
        "sessions": {"open": 3, "by_listener": {"127.0.0.1:25": 2, "127.0.0.1:587": 1}},
        "queue": {"total": 2, "active": 0, "deferred": 1, "held": 1}, "oldest_age": 400.0,
        "last_errors": [{"time": 0.0, "msgid": "MFX", "recipient": "c@c.test",
                         "status": "deferred", "reply": "451 busy", "remote": ""}]})
    assert "mailferry is running (pid 42), up 1h 2m" in out
    assert "sessions open  3 (127.0.0.1:25: 2, 127.0.0.1:587: 1)" in out
    assert "queue          2 message(s): 0 active, 1 deferred, 1 held" in out
    assert "MFX <c@c.test>  deferred: 451 busy" in out


# --- the socket ------------------------------------------------------------------------------
def test_a_long_socket_path_is_reached_through_the_folder_descriptor(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "control.sock"
    assert len(os.fsencode(path)) > 108
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        with bindable(path) as name:
            assert name.startswith("/proc/self/fd/")
            server.bind(name)
        server.listen(1)
        assert path.exists()
        with bindable(path) as name:
            client.connect(name)
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
    with bindable(tmp_path / "short.sock") as name:
        assert name == str(tmp_path / "short.sock")


def test_peer_uid_is_the_kernels_answer_and_who_may_connect() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == os.geteuid()
    assert allowed(1000, 1000) and allowed(0, 1000)
    assert not allowed(1001, 1000) and not allowed(65534, 0)
