"""The answers behind both the JSON API and the pages: index → response models.

Every public function here is blocking (it may read appended log bytes) and runs in a worker
thread under the index's lock (:meth:`Data.run`), so the SMTP event loop never waits for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from mailferry.tracker import report as report_mod
from mailferry.tracker.query import Query
from mailferry.web import models
from mailferry.web.index import LogIndex, SessionEntry, direction_letter

T = TypeVar("T")

# Delay buckets for the chart: upper bounds in seconds, and their labels.
DELAY_BUCKETS: list[tuple[int, str]] = [(1, "< 1 s"), (10, "1–10 s"), (60, "10–60 s"),
                                        (600, "1–10 min"), (3600, "10–60 min"),
                                        (4 * 3600, "1–4 h"), (1 << 62, "> 4 h")]


class Data:
    def __init__(self, index: LogIndex, session_live: Callable[[str], bool] | None) -> None:
        self.index = index
        self.session_live = session_live
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Refresh the index with what the log gained, then answer: one at a time, off-loop."""
        async with self._lock:
            return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        with self.index.lock:
            self.index.refresh()
            return fn(*args)

    # -- sessions --------------------------------------------------------------------------------
    def sessions(self, kind: str | None = None, state: str | None = None, peer: str | None = None,
                 limit: int = 200) -> models.SessionList:
        # Up to max_sessions entries: filter and sort on the plain dicts, and build response
        # models only for the rows shown.
        live = [(self._open_state(sess), sess, ids, n)
                for sess, ids, n in self.index.open_sessions()]
        closed = ((self._state(e), e) for e in self.index.sessions.values())

        def wanted(st: str, sess: dict) -> bool:
            return (kind is None or direction_letter(sess) == kind) and \
                (state is None or st == state) and \
                (peer is None or (sess["peer"] or "").startswith(peer))

        live = [x for x in live if wanted(x[0], x[1])]
        done = [(st, e) for st, e in closed if wanted(st, e.session)]
        # Live ones first (yellow at the top), then newest first.
        live.sort(key=lambda x: (x[0] == "active", x[1]["start"] or ""), reverse=True)
        done.sort(key=lambda x: x[1].session["start"] or "", reverse=True)
        rows = [_session_row(sess, st, ids, n, None) for st, sess, ids, n in live[:limit]]
        rows += [self._row(e, st) for st, e in done[:max(0, limit - len(rows))]]
        rows.sort(key=lambda r: (r.state == "active", r.start or ""), reverse=True)
        return models.SessionList(sessions=rows, total=len(live) + len(done))

    def session(self, file: str, line: int) -> models.SessionDetail | None:
        entry = self.index.session(file, line)
        if entry is None:
            return None
        opened = entry.record_status == "open"
        row = self._open_row(entry.session, entry.msgids, len(entry.msgids)) if opened \
            else self._row(entry)
        lines = [models.LogLine(line=n, text=t, note=note)
                 for n, t, note in self.index.session_lines(entry.session)]
        notes = [n["text"] for n in entry.session["notes"]]
        return models.SessionDetail(session=row, lines=lines, notes=notes)

    @staticmethod
    def _state(e: SessionEntry) -> str:
        return "failed" if e.bad or e.record_status in ("rejected", "incomplete") else "success"

    def _open_state(self, sess: dict) -> str:
        live = self.session_live
        # Open in the log but not in this process: the server stopped (or crashed) meanwhile.
        return "active" if live is None or live(sess["sid"] or "") else "failed"

    def _row(self, e: SessionEntry, state: str | None = None) -> models.SessionRow:
        return _session_row(e.session, state or self._state(e), e.msgids, len(e.msgids),
                            e.record_status)

    def _open_row(self, sess: dict, msgids: list[str], transactions: int) -> models.SessionRow:
        return _session_row(sess, self._open_state(sess), msgids, transactions, None)

    # -- messages --------------------------------------------------------------------------------
    def messages(self, query: Query, limit: int = 200) -> models.MessageList:
        found = [r for r in reversed(self.index.records.values())
                 if r["type"] == "message" and query.matches(r)]
        return models.MessageList(messages=[_message_row(r) for r in found[:limit]],
                                  total=len(found))

    def message(self, msgid: str) -> models.MessageDetail | None:
        rec = self.index.message(msgid)
        if rec is None:
            return None
        events = timeline(rec)
        failed = [x for x in rec["recipients"] if x["status"] == "failed"]
        bounce = self.index.bounce_of(rec["msgid"]) if rec["msgid"] and not rec["bounce"] \
            else None
        if bounce and failed:  # a bounce to a local sender: the log has no session for it
            events.append(models.TimelineEvent(
                time=max((x["finished"] or "" for x in failed), default=None) or rec["end"],
                kind="bounce", status="sent",
                title=f"bounce {bounce} sent to {rec['sender'] or '?'} for "
                      + ", ".join(x["address"] for x in failed),
                replies=[x["remote_reply"] for x in failed if x["remote_reply"]],
                session_id=None))
        return models.MessageDetail(message=_message_row(rec),
                                    recipients=[_recipient(x) for x in rec["recipients"]],
                                    timeline=events, record=rec)

    # -- report ----------------------------------------------------------------------------------
    def report(self) -> models.Report:
        rep = report_mod.Report()
        bounced: Counter[str] = Counter()
        for r in self.index.records.values():
            rep.add(r)
            for x in r["recipients"]:
                if x["status"] == "failed" and x["finished"]:
                    bounced[_hour(x["finished"])] += 1
        data = rep.as_dict(self.index.stats)
        hours = sorted(set(data["per_hour"]) | set(bounced))
        per_hour = [models.HourCount(hour=h, received=data["per_hour"].get(h, {}).get(
            "received", 0), delivered=data["per_hour"].get(h, {}).get("delivered", 0),
            bounced=bounced[h]) for h in hours]
        histogram = Counter()
        for delay, n in rep.delays.items():
            histogram[next(label for bound, label in DELAY_BUCKETS if delay < bound)] += n

        def top(key: str) -> list[models.Count]:
            return [models.Count(name=str(k), count=n) for k, n in data[key]]

        return models.Report(
            totals=data["totals"], per_hour=per_hour,
            delivery_delay=models.DelayStats(**data["delivery_delay"]),
            delay_histogram=[models.Count(name=label, count=histogram[label])
                             for _, label in DELAY_BUCKETS],
            top_senders=top("top_senders"), top_recipients=top("top_recipients"),
            top_clients=top("top_clients"),
            top_authenticated_users=top("top_authenticated_users"),
            rejection_reasons=top("rejection_reasons"),
            delivery_failures=top("delivery_failures"), log=data["log"])


def _hour(stamp: str) -> str:
    return stamp[:13].replace("T", " ") if "T" in stamp else stamp[:2]


def session_id(sess: dict | None) -> str | None:
    return f"{sess['file']}:{sess['line']}" if sess else None


def _seconds_between(start: str | None, end: str | None) -> int | None:
    if not start or not end or "T" not in start or "T" not in end:
        return None
    try:
        return max(0, int((datetime.fromisoformat(end) - datetime.fromisoformat(start))
                          .total_seconds()))
    except (ValueError, TypeError):
        return None


def _session_row(sess: dict, state: str, msgids: list[str], transactions: int,
                 status: str | None) -> models.SessionRow:
    auth = sess["auth"] or {}
    return models.SessionRow(
        id=session_id(sess) or "", file=sess["file"], line=sess["line"],
        kind=direction_letter(sess), state=state, peer=sess["peer"], sid=sess["sid"],
        helo=sess["helo"], user=auth.get("user") if auth.get("ok") else None,
        tls=bool(sess["tls"]), messages=list(msgids), transactions=transactions,
        start=sess["start"], end=sess["end"],
        duration=_seconds_between(sess["start"], sess["end"]), status=status)


def _message_row(r: dict) -> models.MessageRow:
    sess = r["session"]
    return models.MessageRow(
        msgid=r["msgid"], status=r["status"], final=r["final"], start=r["start"], end=r["end"],
        sender=r["sender"], recipients=[x["address"] for x in r["recipients"]], size=r["size"],
        peer=sess["peer"] if sess else None, session_id=session_id(sess))


def _recipient(x: dict) -> models.RecipientState:
    return models.RecipientState(
        address=x["address"], status=x["status"], route=x["route"], reply=x["reply"],
        remote_reply=x["remote_reply"], attempts=x["attempts"], delay=x["delay"],
        host=x["host"], ip=x["ip"], next_retry=x["next_retry"])


def timeline(rec: dict) -> list[models.TimelineEvent]:
    """From the inbound session to every delivery attempt and the bounce, in time order."""
    events: list[models.TimelineEvent] = []
    sess = rec["session"]
    if sess:
        who = f"{sess['peer']}" + (f" ({sess['helo']})" if sess["helo"] else "")
        replies = [x["reply"] for x in rec["recipients"] if x["reply"]]
        if rec["reply"]:
            replies.append(rec["reply"])
        events.append(models.TimelineEvent(
            time=rec["start"] or sess["start"], kind="received", status=rec["status"],
            title=f"received from {who}", replies=replies, session_id=session_id(sess)))
    local = [x for x in rec["recipients"] if x["route"] == "local" and not x["attempts"]
             and x["status"] == "delivered"]
    if local:  # a mailbox delivery is no SMTP session: it happens as the message is received
        events.append(models.TimelineEvent(
            time=rec["end"] or rec["start"], kind="delivery", status="delivered",
            title="delivered to the local mailbox of " + ", ".join(x["address"] for x in local),
            replies=[], session_id=None))
    events += _deliveries(rec, "delivery")
    for a in rec.get("queue_actions", ()):  # hold, release, delete … by an administrator
        events.append(models.TimelineEvent(
            time=a["time"], kind="queue", status=a["action"],
            title=f"{a['action']} by {a['by']}", replies=[a["detail"]] if a["detail"] else [],
            session_id=None))
    b = rec["bounce"]
    if b:
        to = ", ".join(x["address"] for x in b["recipients"]) or "?"
        events.append(models.TimelineEvent(
            time=b["start"], kind="bounce", status=b["status"],
            title=f"bounce {b['msgid']} to {to}", replies=[], session_id=session_id(b["session"])))
        events += _deliveries(b, "bounce-delivery")
    events.sort(key=lambda e: e.time or "")
    return events


def _deliveries(rec: dict, kind: str) -> list[models.TimelineEvent]:
    out = []
    for d in rec["deliveries"]:
        where = d["host"] or d["session"]["peer"] or "?"
        if d["ip"] and d["ip"] != where:
            where += f" [{d['ip']}]"
        replies = [f"{x['address']}: {x['reply']}" for x in d["recipients"] if x["reply"]]
        if d["reply"]:
            replies.append(d["reply"])
        replies += [a["error"] for a in d["session"]["attempts"] if a["error"]]
        if d["next_retry"]:
            replies.append(f"next retry {d['next_retry']}")
        out.append(models.TimelineEvent(
            time=d["start"], kind=kind, status=d["status"],  # type: ignore[arg-type]
            title=f"delivery attempt to {where}", replies=replies,
            session_id=session_id(d["session"])))
    return out
