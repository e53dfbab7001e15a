"""queue/state.py: replaying a message's delivery state after a crash.

The file is append-only and a crash can tear its last line anywhere; what was recorded final
(delivered, failed) before that must come back exactly, or a restart would deliver twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.queue.remote import _split_remote
from mailferry.queue.state import (
    DELIVERED,
    FAILED,
    PENDING,
    RecipientState,
    StateStore,
)

MSG = "MF0000000001"


def _store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def test_nothing_recorded_means_all_pending(tmp_path: Path) -> None:
    state = _store(tmp_path).load(MSG, [0, 2])
    assert state.pending() == [0, 2]
    assert state.due() == 0.0
    assert not state.warned and state.unbounced() == []


def test_outcomes_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(MSG, 0, RecipientState(DELIVERED, 1, "250 2.0.0 queued as X", 0.0, 10.0,
                                        "mx.c.test [127.0.0.3]", "2.0.0"), durable=True)
    store.record(MSG, 1, RecipientState(PENDING, 2, "451 4.3.0 busy", 99.0, 11.0,
                                        "mx.c.test [127.0.0.3]", "4.3.0"), durable=False)
    state = store.load(MSG, [0, 1])
    assert state.recipients[0] == RecipientState(DELIVERED, 1, "250 2.0.0 queued as X", 0.0,
                                                 10.0, "mx.c.test [127.0.0.3]", "2.0.0")
    assert state.recipients[1].attempts == 2 and state.recipients[1].next_attempt == 99.0
    assert state.pending() == [1] and state.due() == 99.0
    assert state.first_attempt == 10.0


def test_torn_last_line_is_ignored_and_final_outcome_survives(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(MSG, 0, RecipientState(DELIVERED, 1, "250 ok", last_attempt=5.0), durable=True)
    store.record(MSG, 1, RecipientState(PENDING, 1, "451 later", 60.0, 5.0), durable=False)
    path = store.folder / MSG
    with path.open("a") as f:
        f.write('{"i":1,"s":"delivered","a":2,"r":"250 o')  # kill -9 in the middle of a write
    state = store.load(MSG, [0, 1])
    assert state.recipients[0].status == DELIVERED
    assert state.recipients[1].status == PENDING and state.recipients[1].attempts == 1


def test_record_after_a_torn_line_is_not_lost(tmp_path: Path) -> None:
    # Appending right after the torn bytes would make one unreadable line of both records.
    store = _store(tmp_path)
    store.record(MSG, 0, RecipientState(PENDING, 1, "451 later", 60.0, 5.0), durable=False)
    with (store.folder / MSG).open("a") as f:
        f.write('{"i":0,"s":"pend')
    store.record(MSG, 0, RecipientState(DELIVERED, 2, "250 ok", 60.0, 70.0), durable=True)
    state = store.load(MSG, [0])
    assert state.recipients[0].status == DELIVERED and state.recipients[0].attempts == 2


def test_final_outcome_is_never_undone_by_a_later_line(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(MSG, 0, RecipientState(DELIVERED, 1, "250 ok"), durable=True)
    store.record(MSG, 0, RecipientState(PENDING, 2, "451 later", 60.0), durable=False)
    store.record(MSG, 1, RecipientState(FAILED, 1, "550 no", enhanced="5.1.1"), durable=True)
    store.record(MSG, 1, RecipientState(PENDING, 2, "451 later", 60.0), durable=False)
    state = store.load(MSG, [0, 1])
    assert state.recipients[0].status == DELIVERED and state.recipients[0].reply == "250 ok"
    assert state.recipients[1].status == FAILED and state.recipients[1].enhanced == "5.1.1"
    assert state.pending() == []


def test_failed_without_bounce_line_is_reported_for_bouncing(tmp_path: Path) -> None:
    # A crash between recording the failure and queueing its bounce: replay must say so.
    store = _store(tmp_path)
    store.record(MSG, 0, RecipientState(FAILED, 1, "550 a"), durable=True)
    store.record(MSG, 1, RecipientState(FAILED, 1, "550 b"), durable=True)
    store.record(MSG, 2, RecipientState(DELIVERED, 1, "250 c"), durable=True)
    assert store.load(MSG, [0, 1, 2]).unbounced() == [0, 1]
    store.record_bounced(MSG, [0])
    assert store.load(MSG, [0, 1, 2]).unbounced() == [1]
    store.record_bounced(MSG, [1])
    assert store.load(MSG, [0, 1, 2]).unbounced() == []


def test_warned_survives_and_junk_is_skipped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / MSG).write_text(
        '[1, 2]\n"text"\n{"i": 7, "s": "delivered"}\n{"bounced": "x"}\n\n')
    store.record_warned(MSG)
    state = store.load(MSG, [0])
    assert state.warned
    assert state.pending() == [0]  # the record for an unknown index 7 changed nothing


def test_remove_forgets_the_message(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(MSG, 0, RecipientState(DELIVERED, 1, "250 ok"), durable=True)
    store.remove(MSG)
    store.remove(MSG)  # twice is fine: removal after a crash may repeat
    assert store.load(MSG, [0]).pending() == [0]


_OUTCOMES = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from([PENDING, DELIVERED, FAILED]),
              st.text(max_size=20)),
    min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(outcomes=_OUTCOMES, cut=st.floats(0, 1))
def test_any_crash_point_keeps_every_complete_final_record(
        tmp_path_factory: pytest.TempPathFactory, outcomes: list[tuple[int, str, str]],
        cut: float) -> None:
    """Whatever prefix of the file survives a crash, every recipient whose final record is
    complete in it replays as that outcome, and loading never raises."""
    folder = tmp_path_factory.mktemp("state")
    store = StateStore(folder)
    for attempt, (i, status, reply) in enumerate(outcomes, 1):
        store.record(MSG, i, RecipientState(status, attempt, reply), durable=False)
    path = folder / MSG
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    # What should come back: the first final record per recipient among the complete records
    # (the last piece may be torn, or whole but for its newline, which still counts).
    expected: dict[int, str] = {}
    for line in path.read_bytes().split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec["s"] != PENDING:
            expected.setdefault(rec["i"], rec["s"])
    state = store.load(MSG, [0, 1, 2])
    for i in (0, 1, 2):
        assert state.recipients[i].status == expected.get(i, PENDING)
    # and the next record after the crash is read back too
    store.record(MSG, 0, RecipientState(DELIVERED, 99, "250 after"), durable=False)
    after = store.load(MSG, [0, 1, 2]).recipients[0]
    assert after.status == expected.get(0, DELIVERED)


def test_split_remote_for_the_bounce_text() -> None:
    assert _split_remote("mx.c.test [127.0.0.3]") == ("mx.c.test", "127.0.0.3")
    assert _split_remote("mx6.c.test [2001:db8::1]") == ("mx6.c.test", "2001:db8::1")
    assert _split_remote("") == (None, None)
    assert _split_remote("odd") == ("odd", None)


def test_prune_drops_state_of_messages_no_longer_queued(tmp_path: Path) -> None:
    from mailferry.queue.state import StateStore

    states = StateStore(tmp_path / "state")
    (tmp_path / "state" / "MFGONE000000").write_text("{}\n")
    (tmp_path / "state" / "MFKEEP000000").write_text("{}\n")
    assert states.prune({"MFKEEP000000"}) == 1
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["MFKEEP000000"]
