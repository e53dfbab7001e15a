"""MX ordering and null MX detection (RFC 5321 §5.1, RFC 7505 §3): pure functions, no DNS."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mailferry.dns.mx import is_null_mx, order_mx

# A small pool of names and preferences, so duplicates and ties (the interesting cases) are common.
hosts = st.sampled_from([f"mx{i}.example.test" for i in range(8)])
records = st.lists(st.tuples(st.integers(0, 30), hosts), max_size=12)


def best_preference(recs: list[tuple[int, str]]) -> dict[str, int]:
    best: dict[str, int] = {}
    for pref, host in recs:
        best[host] = min(pref, best.get(host, pref))
    return best


@given(records, st.integers())
def test_order_mx_lists_each_host_once_by_ascending_preference(
    recs: list[tuple[int, str]], seed: int
) -> None:
    ordered = order_mx(recs, random.Random(seed))
    best = best_preference(recs)
    assert sorted(ordered) == sorted(best)
    prefs = [best[h] for h in ordered]
    assert prefs == sorted(prefs)


@given(records, st.integers())
def test_order_mx_is_deterministic_for_a_given_rng(recs: list[tuple[int, str]], seed: int) -> None:
    assert order_mx(recs, random.Random(seed)) == order_mx(recs, random.Random(seed))


def test_order_mx_spreads_equal_preferences_at_random() -> None:
    recs = [(10, "a.test"), (10, "b.test"), (10, "c.test"), (20, "z.test")]
    rng = random.Random(1)
    firsts = {order_mx(recs, rng)[0] for _ in range(200)}
    lasts = {order_mx(recs, rng)[-1] for _ in range(200)}
    assert firsts == {"a.test", "b.test", "c.test"}
    assert lasts == {"z.test"}


def test_order_mx_drops_trailing_dots_root_targets_and_case_duplicates() -> None:
    recs = [(20, "MX.example.test."), (10, "mx.example.test"), (5, "."), (30, "")]
    assert order_mx(recs, random.Random(0)) == ["mx.example.test"]


@given(hosts | st.sampled_from([".", ""]), st.integers(0, 65535))
def test_is_null_mx_only_for_a_single_root_record_of_preference_0(host: str, pref: int) -> None:
    assert is_null_mx([(pref, host)]) == (pref == 0 and host in (".", ""))


@given(st.lists(st.tuples(st.integers(0, 65535), hosts | st.just(".")), min_size=2, max_size=5))
def test_is_null_mx_is_false_with_more_than_one_record(recs: list[tuple[int, str]]) -> None:
    # RFC 7505 §3: a domain with a null MX MUST NOT publish other MX records; if it does, the
    # set is not a null MX.
    assert not is_null_mx(recs)


def test_is_null_mx_false_for_no_records() -> None:
    assert not is_null_mx([])
