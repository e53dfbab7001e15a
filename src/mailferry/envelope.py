"""The envelope of a queued message: who sent it, to whom, from where. A small shared value.

Stored as the first line of the queue file (JSON), so a person can ``head -1`` a queue file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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
        # Built by hand: dataclasses.asdict deep-copies recursively and costs more than the
        # rest of this (it runs for every message).
        data = {
            "msgid": self.msgid, "sender": self.sender,
            "recipients": [{"address": r.address, "original": r.original, "local": r.local}
                           for r in self.recipients],
            "received_at": self.received_at, "client_ip": self.client_ip, "helo": self.helo,
            "size": self.size, "extra": self.extra,
        }
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Envelope:
        data = json.loads(line)
        data["recipients"] = [Recipient(**r) for r in data["recipients"]]
        return cls(**data)
