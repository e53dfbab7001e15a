"""The JSON API's shapes (pydantic): they make /api/openapi.json precise, and the pages render
the very same objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SessionState = Literal["active", "success", "failed"]
MessageStatus = Literal["delivered", "deferred", "failed", "bounced", "rejected", "refused",
                        "aborted", "queued", "incomplete", "no-mail"]


class Error(BaseModel):
    detail: str


class SessionRow(BaseModel):
    id: str = Field(description="FILE:LINE where the session begins in the transaction log")
    file: str
    line: int
    kind: Literal["S", "C"] = Field(description="S: we served it; C: we connected (delivery)")
    state: SessionState
    peer: str | None
    sid: str | None
    helo: str | None
    user: str | None = Field(description="the authenticated user, if any")
    tls: bool
    messages: list[str] = Field(description="message IDs received or delivered in it")
    transactions: int
    start: str | None
    end: str | None
    duration: int | None = Field(description="seconds")
    status: str | None = Field(description="for a session without mail: rejected, no-mail …")


class SessionList(BaseModel):
    sessions: list[SessionRow]
    total: int = Field(description="sessions matching, before the limit")


class LogLine(BaseModel):
    line: int
    text: str
    note: str = Field(description="the plain-language note of `trace --explain`")


class SessionDetail(BaseModel):
    session: SessionRow
    lines: list[LogLine]
    notes: list[str]


class MessageRow(BaseModel):
    msgid: str | None
    status: str
    final: bool
    start: str | None
    end: str | None
    sender: str | None
    recipients: list[str]
    size: int | None
    peer: str | None
    session_id: str | None


class MessageList(BaseModel):
    messages: list[MessageRow]
    total: int


class RecipientState(BaseModel):
    address: str
    status: str
    route: str | None
    reply: str | None
    remote_reply: str | None
    attempts: int
    delay: int | None
    host: str | None
    ip: str | None
    next_retry: str | None


class TimelineEvent(BaseModel):
    time: str | None
    kind: Literal["received", "delivery", "bounce", "bounce-delivery", "queue"]
    status: str
    title: str
    replies: list[str]
    session_id: str | None


class MessageDetail(BaseModel):
    message: MessageRow
    recipients: list[RecipientState]
    timeline: list[TimelineEvent]
    record: dict[str, Any] = Field(description="the tracker's record (docs/tracking.md)")


class Count(BaseModel):
    name: str
    count: int


class HourCount(BaseModel):
    hour: str
    received: int
    delivered: int
    bounced: int


class DelayStats(BaseModel):
    count: int
    p50: int | None
    p95: int | None
    max: int | None


class Report(BaseModel):
    totals: dict[str, int]
    per_hour: list[HourCount]
    delivery_delay: DelayStats
    delay_histogram: list[Count] = Field(description="deliveries per delay bucket")
    top_senders: list[Count]
    top_recipients: list[Count]
    top_clients: list[Count]
    top_authenticated_users: list[Count] = Field(
        default_factory=list, description="messages received per authenticated (AUTH) user")
    rejection_reasons: list[Count]
    delivery_failures: list[Count]
    log: dict[str, Any]


class QueueRecipient(BaseModel):
    model_config = ConfigDict(extra="allow")
    address: str
    state: str | None = None
    last_reply: str | None = None


class QueueItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    received_at: float | str | None = None
    age: float | None = None
    size: int | None = None
    sender: str | None = None
    state: str
    next_attempt: float | str | None = None
    last_error: str | None = None
    attempts: int | None = None
    recipients: list[QueueRecipient] = []


class QueueDetail(QueueItem):
    envelope: dict[str, Any] | None = None
    headers: Any = None
    history: list[dict[str, Any]] = []
    log_record: dict[str, Any] | None = Field(default=None, description="its tracker record")
    trace: str | None = Field(default=None, description="`mailferry trace --explain` text")


class QueueList(BaseModel):
    items: list[QueueItem]


class ActionResult(BaseModel):
    ok: bool
    message: str


class FlushRequest(BaseModel):
    msgid: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,64}$")
    domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]{1,253}$")


class WhoAmI(BaseModel):
    user: str | None
    login_required: bool
    csrf_token: str = Field(description="send it as X-CSRF-Token with every POST")
