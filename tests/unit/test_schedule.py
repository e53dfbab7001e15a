"""The retry schedule: when a deferred message is tried again, when it expires, when the sender
hears that it is late. Times are plain numbers; nothing here reads a clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.queue.schedule import (
    RetryPolicy,
    delay_warning_due,
    expires_at,
    is_expired,
    next_attempt,
    retry_delay,
)

T0 = 1_700_000_000.0
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
DEFAULT = RetryPolicy()


def simulate(policy: RetryPolicy, received_at: float,
             duration: float = 0.0) -> list[float]:
    """Attempt times of a message whose every attempt fails after ``duration`` seconds: the first
    at arrival, then whatever next_attempt says, until it says None."""
    times = [received_at]
    attempts = 0
    while True:
        attempts += 1
        when = next_attempt(policy, attempts, received_at, times[-1] + duration)
        if when is None:
            return times
        times.append(when)
        assert len(times) < 10_000, "never expires"


# --- the defaults ---------------------------------------------------------------------------------
def test_defaults_wait_5_10_20_40_minutes_then_hourly() -> None:
    assert [retry_delay(DEFAULT, n) for n in range(1, 9)] == \
        [5 * MINUTE, 10 * MINUTE, 20 * MINUTE, 40 * MINUTE, HOUR, HOUR, HOUR, HOUR]
    assert [next_attempt(DEFAULT, n, T0, T0 + 1000) for n in (1, 2, 3, 4, 5, 50)] == \
        [T0 + 1300, T0 + 1600, T0 + 2200, T0 + 3400, T0 + 4600, T0 + 4600]


def test_defaults_attempt_times_from_arrival() -> None:
    times = simulate(DEFAULT, T0)
    assert [t - T0 for t in times[:8]] == [
        0, 5 * MINUTE, 15 * MINUTE, 35 * MINUTE, 75 * MINUTE,
        75 * MINUTE + HOUR, 75 * MINUTE + 2 * HOUR, 75 * MINUTE + 3 * HOUR,
    ]
    # Five days: hourly attempts until 4500 + 118 h = 429300 s; the next would fall at 432900,
    # past the lifetime, so the last one is moved back to exactly 5 days, then it is over.
    assert times[-2] - T0 == 4500 + 118 * HOUR
    assert times[-1] - T0 == 5 * DAY
    assert len(times) == 5 + 118 + 1


def test_defaults_expire_after_five_days_and_warn_after_four_hours() -> None:
    assert expires_at(DEFAULT, T0) == T0 + 5 * DAY
    assert not is_expired(DEFAULT, T0, T0 + 5 * DAY - 0.001)
    assert is_expired(DEFAULT, T0, T0 + 5 * DAY)
    assert not delay_warning_due(DEFAULT, T0, T0 + 4 * HOUR - 1, already_warned=False)
    assert delay_warning_due(DEFAULT, T0, T0 + 4 * HOUR, already_warned=False)


# --- expiry ---------------------------------------------------------------------------------------
def test_attempt_past_expiry_is_moved_to_expiry() -> None:
    policy = RetryPolicy(schedule=(100,), then_every=100, lifetime=250)
    assert next_attempt(policy, 1, T0, T0 + 120) == T0 + 220
    assert next_attempt(policy, 2, T0, T0 + 220) == T0 + 250  # not T0 + 320
    assert next_attempt(policy, 3, T0, T0 + 250) is None  # failed at the deadline: bounce


def test_no_attempt_once_expired() -> None:
    assert next_attempt(DEFAULT, 1, T0, T0 + 5 * DAY) is None
    assert next_attempt(DEFAULT, 7, T0, T0 + 6 * DAY) is None


def test_expired_message_gets_no_delay_warning() -> None:
    assert not delay_warning_due(DEFAULT, T0, T0 + 5 * DAY, already_warned=False)


def test_delay_warning_only_once_and_never_when_disabled() -> None:
    assert not delay_warning_due(DEFAULT, T0, T0 + DAY, already_warned=True)
    off = RetryPolicy(delay_warning=None)
    assert not delay_warning_due(off, T0, T0 + DAY, already_warned=False)
    late = RetryPolicy(lifetime=HOUR, delay_warning=2 * HOUR)  # would come after expiry
    assert not any(delay_warning_due(late, T0, T0 + s, already_warned=False)
                   for s in range(0, 3 * 3600, 60))


# --- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"schedule": (300, 0)}, {"schedule": (-1,)}, {"then_every": 0}, {"lifetime": 0},
    {"delay_warning": 0},
])
def test_policy_refuses_non_positive_times(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError):
        next_attempt(DEFAULT, 0, T0, T0)


def test_empty_schedule_means_every_then_every() -> None:
    policy = RetryPolicy(schedule=(), then_every=900)
    assert [retry_delay(policy, n) for n in (1, 2, 3)] == [900, 900, 900]


# --- properties -----------------------------------------------------------------------------------
_delay = st.floats(1, 10 * DAY, allow_nan=False)
policies = st.builds(
    RetryPolicy,
    schedule=st.lists(_delay, max_size=6).map(tuple),
    then_every=_delay,
    lifetime=st.floats(1, 30 * DAY),
    delay_warning=st.one_of(st.none(), _delay),
)
times = st.floats(0, 2e9, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(1, 50), times, st.floats(-DAY, 40 * DAY))
def test_next_attempt_is_after_now_and_never_after_expiry(
    policy: RetryPolicy, attempts: int, received_at: float, age: float
) -> None:
    now = received_at + age
    when = next_attempt(policy, attempts, received_at, now)
    deadline = received_at + policy.lifetime
    if now >= deadline:
        assert when is None
    else:
        assert when is not None
        assert now < when <= deadline
        assert when == min(now + retry_delay(policy, attempts), deadline)


# Delays of at least 10 minutes and at most 10 days of lifetime: at most 1440 attempts to run.
_sim_delay = st.floats(600, 2 * DAY, allow_nan=False)
sim_policies = st.builds(
    RetryPolicy,
    schedule=st.lists(_sim_delay, max_size=6).map(tuple),
    then_every=_sim_delay,
    lifetime=st.floats(1, 10 * DAY),
)


@settings(max_examples=200, deadline=None)
@given(sim_policies, times, st.floats(0, HOUR))
def test_simulated_attempts_strictly_increase_and_end_by_expiry(
    policy: RetryPolicy, received_at: float, duration: float
) -> None:
    attempts = simulate(policy, received_at, duration)
    deadline = received_at + policy.lifetime
    assert all(a < b for a, b in itertools.pairwise(attempts))
    assert all(t <= deadline for t in attempts)
    # It stops only because the last attempt failed at or after the deadline.
    assert attempts[-1] + duration >= deadline


@settings(max_examples=200, deadline=None)
@given(st.lists(_delay, max_size=6).map(lambda d: tuple(sorted(d))), _delay, times,
       st.integers(1, 40))
def test_sorted_schedule_never_waits_less_after_more_failures(
    schedule: tuple[float, ...], every: float, now: float, attempts: int
) -> None:
    policy = RetryPolicy(schedule=schedule, then_every=max((*schedule, every)),
                         lifetime=1e12)
    a = next_attempt(policy, attempts, now, now)
    b = next_attempt(policy, attempts + 1, now, now)
    assert a is not None and b is not None and a <= b


@settings(max_examples=200, deadline=None)
@given(policies, times, st.floats(-DAY, 40 * DAY))
def test_delay_warning_window(policy: RetryPolicy, received_at: float, age: float) -> None:
    now = received_at + age
    due = delay_warning_due(policy, received_at, now, already_warned=False)
    if policy.delay_warning is None:
        assert not due
    else:
        assert due == (received_at + policy.delay_warning <= now
                       and not is_expired(policy, received_at, now))
