"""Identifiers: transaction-log session IDs and message (queue) IDs.

Shared values only; no I/O. The message ID is what joins a received message to every delivery
session and bounce in the transaction log, so it must be unique across restarts and sortable by
time (a person scanning a queue directory sees the oldest first).
"""

from __future__ import annotations

import os
import time

# Crockford base32: no I, L, O, U, so an ID read aloud or copied by hand is not misread.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: 30 bits of seconds last until 2058.


class MessageIdFactory:
    """Makes IDs like ``MF7Q2K9X3A1`` : ``MF`` + 10 base32 digits (30 bits time, 20 bits counter).

    The counter starts at a random value so that two runs within one second do not collide; the
    queue store still creates files with O_EXCL, so a collision can never overwrite a message.
    """

    def __init__(self) -> None:
        self._second = 0
        self._counter = int.from_bytes(os.urandom(3), "big") & 0xFFFFF

    def new(self, now: float | None = None) -> str:
        second = int(now if now is not None else time.time()) - _EPOCH
        if second != self._second:
            self._second = second
        self._counter = (self._counter + 1) & 0xFFFFF
        value = ((second & 0x3FFFFFFF) << 20) | self._counter
        digits = []
        for _ in range(10):
            digits.append(_ALPHABET[value & 31])
            value >>= 5
        return "MF" + "".join(reversed(digits))


_VALUE = {c: i for i, c in enumerate(_ALPHABET)}


def message_time(msgid: str) -> float | None:
    """The second a message ID was made (its arrival), or None when it is not one of ours."""
    if len(msgid) != 12 or not msgid.startswith("MF"):
        return None
    value = 0
    for c in msgid[2:]:
        digit = _VALUE.get(c)
        if digit is None:
            return None
        value = value << 5 | digit
    return float((value >> 20) + _EPOCH)


class SessionIdPool:
    """Four-hex-digit session IDs, unique among the sessions open at the same time.

    IceWarp reuses IDs during a day; readers split sessions at Connected/Disconnected, so reuse
    after release is fine, but two open sessions must never share one.
    """

    def __init__(self) -> None:
        self._next = int.from_bytes(os.urandom(2), "big") or 1
        self._open: set[int] = set()

    def acquire(self) -> str:
        for _ in range(0x10000):
            sid = self._next
            self._next = (self._next % 0xFFFF) + 1  # 0000 is reserved for SYSTEM lines
            if sid not in self._open:
                self._open.add(sid)
                return f"{sid:04X}"
        raise RuntimeError("more than 65535 sessions open at once")

    def release(self, sid: str) -> None:
        self._open.discard(int(sid, 16))

    def in_use(self, sid: str) -> bool:
        """Whether a session with this ID is open now (the web UI's live view asks)."""
        try:
            return int(sid, 16) in self._open
        except ValueError:
            return False
