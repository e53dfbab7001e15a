"""The envelope of a queued message: who sent it, to whom, from where. A small shared value.

Stored as the first line of the queue file (JSON), so a person can ``head -1`` a queue file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Recipient:
    address: str  # the final mailbox after alias expansion
    original: str  # as given in RCPT TO
    local: bool  # delivered to a local Maildir (else relayed, see issue 3)


@dataclass
class Envelope:
    msgid: str
    sender: str  # "" for the null sender
    recipients: list[Recipient]
    received_at: float
    client_ip: str
    helo: str
    size: int
    extra: dict[str, str] = field(default_factory=dict)

    def to_line(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Envelope:
        data = json.loads(line)
        data["recipients"] = [Recipient(**r) for r in data["recipients"]]
        return cls(**data)
