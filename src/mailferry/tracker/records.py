"""The transaction record: rebuilt sessions → plain JSON-ready dicts (docs/tracking.md).

Where it sits: reconstruct.py calls it when a story is ready to be emitted; render.py, query.py,
report.py and the web UI read only these dicts, never the session objects, so the record format
documented in docs/tracking.md is the one contract between reconstruction and everything else.
It must not: hold state, read files, or reorder keys casually (golden tests compare the JSON).
"""

from __future__ import annotations

from datetime import date

from mailferry.tracker.session import IN, OUT, Session, Txn, When
from mailferry.txlog import format as fmt

_DATED = 100_000  # day values at or above this are date ordinals; below, offsets of undated logs
_FATE = {"OK": "delivered", "DEFERRED": "deferred", "FAILED": "failed", "REJECTED": "failed"}


# -- time ---------------------------------------------------------------------------------------
_ISO: dict[When, str] = {}  # a log has few distinct seconds: convert each one once


def iso(when: When | None) -> str | None:
    if when is None:
        return None
    got = _ISO.get(when)
    if got is None:
        if len(_ISO) > 8192:  # bounded: a log is read in time order, old seconds do not return
            _ISO.clear()
        got = _ISO[when] = _iso(when)  # type: ignore[assignment]
    return got


def _iso(when: When) -> str | None:
    """``2026-11-28T10:25:03`` (date from the file name), the full-date stamp with its offset, or
    ``HH:MM:SS`` alone when the log carries no date."""
    day, stamp = when
    if len(stamp) > 8:
        full = fmt.parse_full_stamp(stamp)
        if full is None:
            return stamp
        y, mo, d, h, mi, s, tz = full
        off = f"{tz[:3]}:{tz[3:]}" if tz else ""
        return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{off}"
    if len(stamp) == 7:
        stamp = "0" + stamp
    if day >= _DATED:
        return f"{date.fromordinal(day).isoformat()}T{stamp}"
    return stamp


_SECONDS: dict[When, int | None] = {}  # as _ISO: each second of a log converted once


def seconds(when: When | None) -> int | None:
    """A number of seconds that orders events and measures delays (the offset is ignored)."""
    if when is None:
        return None
    got = _SECONDS.get(when, -1)
    if got == -1:
        if len(_SECONDS) > 8192:  # bounded: a log is read in time order
            _SECONDS.clear()
        got = _SECONDS[when] = _seconds(when)
    return got


def _seconds(when: When) -> int | None:
    day, stamp = when
    if len(stamp) > 8:
        full = fmt.parse_full_stamp(stamp)
        if full is None:
            return None
        day = date(full[0], full[1], full[2]).toordinal()
        return day * 86400 + full[3] * 3600 + full[4] * 60 + full[5]
    s = fmt.stamp_seconds(stamp)
    return None if s is None else day * 86400 + s


# -- sessions -----------------------------------------------------------------------------------
def session_dict(s: Session) -> dict:
    missing = []
    if not s.start_seen():
        missing.append("start")
    if not s.closed:
        missing.append("end")
    auth = None
    if s.auth or s.auth_ok:
        auth = {"mechanism": s.auth, "user": s.auth_ok if isinstance(s.auth_ok, str) else None,
                "ok": bool(s.auth_ok) if s.auth_ok is not None else None}
    return {
        "direction": s.direction or IN,
        "peer": s.peer,
        "sid": s.sid,
        "local_ip": s.local_ip,
        "start": iso(s.start),
        "end": iso((s.lday, s.last)),
        "file": s.source,
        "line": s.lineno,
        "complete": not missing,
        "missing": missing,
        "helo": s.helo,
        "tls": s.tls,
        "auth": auth,
        "greeting": s.greeting,
        "rejected": s.reject,
        "notes": [{"time": iso(w), "text": t} for w, t in s.notes],
        "mx": [{"domain": d, "hosts": [{"host": h, "preference": p} for h, p in hosts],
                "error": err} for d, hosts, err in s.mx],
        "attempts": [{"host": h, "ip": ip, "port": port, "error": err}
                     for h, ip, port, err in s.attempts],
        **({"log": [list(x) for x in s.lines]} if s.lines is not None else {}),
    }


def session_record(s: Session) -> dict:
    """A session in which no message was received or delivered (refused, probes, AUTH only …)."""
    sess = session_dict(s)
    if s.reject:
        status, reason = "rejected", s.reject
    elif sess["missing"]:
        status, reason = "incomplete", None
    else:
        status, reason = "no-mail", None
    rec = _blank("session", None, status, True)
    rec.update(start=sess["start"], end=sess["end"], reason=reason)
    if s.direction is OUT:
        rec["deliveries"] = [delivery_dict(s, None)]
    else:
        rec["session"] = sess
    return rec


def _remote(s: Session) -> tuple[str | None, str | None]:
    for host, ip, _, err in reversed(s.attempts):
        if err is None:
            return host, ip
    return (s.attempts[-1][0], s.attempts[-1][1]) if s.attempts else (None, None)


def delivery_dict(s: Session, txn: Txn | None) -> dict:
    """One outgoing session, seen from one message that it carried."""
    host, ip = _remote(s)
    rcpts = []
    status = "no-attempt"
    if txn is not None:
        fates = {_FATE.get(r.status, "pending") for r in txn.rcpts}
        for st in ("failed", "deferred", "delivered"):
            if st in fates:
                status = st if len(fates) == 1 else "partial"
                break
        rcpts = [{"address": r.address, "reply": r.reply, "status": _FATE.get(r.status, "pending")}
                 for r in txn.rcpts]
    elif s.reject:
        status = "failed"
    return {
        "session": session_dict(s),
        "start": iso(txn.start) if txn else iso(s.start),
        "end": iso(txn.end) if txn else iso((s.lday, s.last)),
        "host": host,
        "ip": ip,
        "sender": txn.sender if txn else None,
        "status": status,
        "reply": txn.reply if txn else None,
        "queued_as": txn.queued_as if txn else None,
        "next_retry": s.retry if status in ("deferred", "partial") else None,
        "recipients": rcpts,
    }


# -- messages -----------------------------------------------------------------------------------
def apply_delivery(fates: dict[str, dict], s: Session, txn: Txn) -> None:
    """Fold what one outgoing session did into the per-recipient fates of its message."""
    host, ip = _remote(s)
    for r in txn.rcpts:
        st = _FATE.get(r.status)
        if st is None:
            continue  # no *** line for this recipient: the session says nothing final about it
        f = fates.get(r.address.lower())
        if f is None:
            f = fates[r.address.lower()] = {"status": st, "attempts": 0, "deferrals": 0,
                                            "when": None, "reply": None, "queued_as": None,
                                            "host": None, "ip": None, "next_retry": None}
        f["attempts"] += 1
        if st == "deferred":
            f["deferrals"] += 1
        f["status"] = st
        f["when"] = txn.end
        # The reply that decided it: a refused RCPT, else the reply to the message data.
        f["reply"] = r.reply if r.accepted is False or not txn.reply else txn.reply
        if st in ("deferred", "failed") and not r.reply and not txn.reply:
            f["reply"] = next((e for *_, e in reversed(s.attempts) if e), None) or \
                next((e for *_, e in reversed(s.mx) if e), None) or s.reject
        f["queued_as"] = txn.queued_as if st == "delivered" else None
        f["host"], f["ip"] = host, ip
        f["next_retry"] = s.retry if st == "deferred" else None


def message_record(msgid: str | None, inbound: tuple[Session, Txn] | None,
                   deliveries: list[tuple[Session, Txn]], fates: dict[str, dict],
                   bounce: dict | None, final: bool, bounce_of: str | None = None,
                   actions: list[dict] | None = None) -> dict:
    txn = inbound[1] if inbound else None
    received_at = seconds(txn.end) if txn else None
    rcpts: list[dict] = []
    seen: set[str] = set()
    for r in txn.rcpts if txn else ():
        seen.add(r.address.lower())
        rcpts.append(_rcpt(r.address, r.reply, r.accepted, r.route, r.status,
                           fates.get(r.address.lower()), received_at, txn.status == "accepted"))
    for addr, f in fates.items():
        if addr not in seen:  # received before the log began, or a bounce: known from delivery
            name = next((r.address for _, t in deliveries for r in t.rcpts
                         if r.address.lower() == addr), addr)
            rcpts.append(_rcpt(name, None, None, "relay", "accepted", f, None, True))
    status = _status(txn, rcpts)
    sender = txn.sender if txn else next((t.sender for _, t in deliveries if t.sender is not None),
                                         None)
    # The story ends with its last event: the receipt, or the last delivery attempt.
    times = [t.end for _, t in deliveries if t.end] + ([txn.end] if txn and txn.end else [])
    end = iso(max(times, key=lambda w: seconds(w) or 0)) if times else None
    rec = _blank("message", msgid, status, final)
    rec.update(
        start=iso(txn.start or inbound[0].start) if txn and inbound else
        (iso(deliveries[0][1].start) if deliveries else None),
        end=end,
        sender=sender,
        size=txn.size if txn else next((t.size for _, t in deliveries if t.size), None),
        size_declared=txn.size_declared if txn else None,
        duration=txn.duration if txn else None,
        reply=txn.reply if txn else None,
        reason=txn.reason if txn else None,
        session=session_dict(inbound[0]) if inbound else None,
        recipients=rcpts,
        # In log order (deliveries to several domains run in parallel and end in any order).
        deliveries=[delivery_dict(s, t) for s, t in sorted(
            deliveries, key=lambda d: (seconds(d[0].start) or 0, d[0].source, d[0].lineno))],
        bounce=bounce,
        bounce_of=bounce_of,
    )
    if actions:
        # Only when there are any: most messages never meet an administrator, and records
        # without them keep exactly the documented shape.
        rec["queue_actions"] = list(actions)
        done = {a["action"] for a in actions}
        if "bounced" in done:  # returned to the sender by an administrator: failed, bounced
            rec["status"] = "failed"
        elif "deleted" in done:
            rec["status"] = "deleted"
    return rec


def _blank(kind: str, msgid: str | None, status: str, final: bool) -> dict:
    return {"type": kind, "msgid": msgid, "status": status, "final": final, "start": None,
            "end": None, "sender": None, "size": None, "size_declared": None, "duration": None,
            "reply": None, "reason": None, "session": None, "recipients": [], "deliveries": [],
            "bounce": None, "bounce_of": None}


def _rcpt(address: str, reply: str | None, accepted: bool | None, route: str | None,
          status: str, fate: dict | None, received_at: int | None, queued: bool) -> dict:
    d = {"address": address, "reply": reply, "accepted": accepted, "route": route,
         "status": status, "attempts": 0, "deferrals": 0, "finished": None, "delay": None,
         "remote_reply": None, "queued_as": None, "host": None, "ip": None, "next_retry": None}
    if fate is not None:
        d["route"] = "relay"  # whatever the RCPT reply said, it went out over SMTP
        d.update(status=fate["status"], attempts=fate["attempts"], deferrals=fate["deferrals"],
                 remote_reply=fate["reply"], queued_as=fate["queued_as"], host=fate["host"],
                 ip=fate["ip"], next_retry=fate["next_retry"])
        if fate["status"] in ("delivered", "failed"):
            d["finished"] = iso(fate["when"])
            done = seconds(fate["when"])
            if done is not None and received_at is not None:
                d["delay"] = done - received_at
    elif status == "accepted" and queued:  # the message was received: the recipient's turn
        d["status"] = "delivered" if route == "local" else "queued"
    return d


def _status(txn: Txn | None, rcpts: list[dict]) -> str:
    """The message's overall status (docs/tracking.md lists them)."""
    if txn is not None and txn.status != "accepted":
        return txn.status  # rejected / aborted / incomplete
    states = {r["status"] for r in rcpts}
    for st in ("failed", "deferred", "queued"):
        if st in states:
            return st
    return "delivered" if "delivered" in states else ("incomplete" if txn is None else "queued")
