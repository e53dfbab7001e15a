"""The retry schedule for remote delivery: pure functions of a policy and times.

The runner asks, after each temporary failure, when to try again (:func:`next_attempt`); a
``None`` answer means the message has run out of time and its recipients are bounced. It also
asks whether the sender is owed a "still trying" notice (:func:`delay_warning_due`).

The rules, precisely (times are seconds since the epoch, passed in by the caller):

- ``expires_at = received_at + lifetime``. A message is expired when ``now >= expires_at``.
- After ``n`` failed attempts the next one is ``schedule[n-1]`` seconds after ``now`` (the time
  of the failure), or ``then_every`` seconds once past the schedule.
- An attempt is never scheduled after ``expires_at``: a later one is moved to ``expires_at``
  itself, so the last try happens exactly when the delay notice's Will-Retry-Until said it would,
  rather than bouncing up to ``then_every`` early. When that try fails, ``now >= expires_at`` and
  the answer is ``None``. The runner therefore attempts a due message *before* looking at expiry.

Must not: read clocks, touch the queue or know anything about SMTP.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: tuple[float, ...] = (300, 600, 1200, 2400)  # seconds after failures 1, 2, 3, 4
    then_every: float = 3600
    lifetime: float = 5 * 86400  # Postfix's maximal_queue_lifetime default; RFC 5321 §4.5.4.1
    #                              says "at least 4-5 days"
    delay_warning: float | None = 4 * 3600  # None: never send a delay notice

    def __post_init__(self) -> None:
        # A zero or negative delay would make the runner spin on a failing host.
        if any(d <= 0 for d in self.schedule) or self.then_every <= 0:
            raise ValueError("retry delays must be positive")
        if self.lifetime <= 0:
            raise ValueError("lifetime must be positive")
        if self.delay_warning is not None and self.delay_warning <= 0:
            raise ValueError("delay_warning must be positive or None")


def expires_at(policy: RetryPolicy, received_at: float) -> float:
    """When the message stops being retried (the delay notice's Will-Retry-Until)."""
    return received_at + policy.lifetime


def is_expired(policy: RetryPolicy, received_at: float, now: float) -> bool:
    return now >= expires_at(policy, received_at)


def retry_delay(policy: RetryPolicy, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th consecutive failure (attempts >= 1)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if attempts <= len(policy.schedule):
        return policy.schedule[attempts - 1]
    return policy.then_every


def next_attempt(policy: RetryPolicy, attempts: int, received_at: float,
                 now: float) -> float | None:
    """When to try next after ``attempts`` failed attempts, the last one failing at ``now``.

    Returns a time in ``(now, expires_at]``, or None when the message is expired (bounce it).
    """
    delay = retry_delay(policy, attempts)
    deadline = expires_at(policy, received_at)
    if now >= deadline:
        return None
    return min(now + delay, deadline)


def delay_warning_due(policy: RetryPolicy, received_at: float, now: float,
                      already_warned: bool) -> bool:
    """Whether to send the one "delayed" notice now (RFC 3464 Action: delayed).

    Once per message, only while it is still being retried: an expired message gets a bounce
    instead, and a warning after it would contradict it.
    """
    if already_warned or policy.delay_warning is None:
        return False
    return received_at + policy.delay_warning <= now < expires_at(policy, received_at)
