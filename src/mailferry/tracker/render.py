"""Showing transaction records: a readable text block, JSON / JSON Lines, and ``--explain``.

Where it sits: the last step of ``mailferry trace``, after query.py has chosen the records.
``--explain`` prints the raw log lines of one message's sessions (kept by reconstruct.py when
asked) with a short plain-language note beside the lines that matter.
It must not: decide what a record means (records.py did) or read files.
"""

from __future__ import annotations

import json

from mailferry.txlog import format as fmt
from mailferry.txlog.format import Kind

# -- JSON ---------------------------------------------------------------------------------------


def jsonl(record: dict) -> str:
    """One record on one line (JSON Lines): what ``--json`` / ``--format jsonl`` print."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))



# -- text ---------------------------------------------------------------------------------------
def _when(stamp: str | None) -> str:
    return (stamp or "?").replace("T", " ")


def _short(stamp: str | None) -> str:
    """The time of day of an ISO stamp: enough beside the full start time of the record."""
    if not stamp:
        return "?"
    return stamp.partition("T")[2][:8] if "T" in stamp else stamp[:8]


def text(record: dict) -> str:
    """A few lines a person can scan: who, when, and what happened to each recipient."""
    r = record
    sess = r["session"]
    out = []
    if r["type"] == "session":
        d = sess or r["deliveries"][0]["session"]
        who = f"{'to' if d['direction'] == 'out' else 'from'} {d['peer']}"
        out.append(f"{'-':12}  {_when(r['start'])}  {r['status']:<10}  session {d['sid']} {who}"
                   + (f": {r['reason']}" if r["reason"] else ""))
        return "\n".join(out)
    size = f"  {r['size']} bytes" if r["size"] is not None else ""
    flag = "" if r["final"] else "  (story not finished in this log)"
    sender = "<>" if r["sender"] == "" else (r["sender"] or "?")
    out.append(f"{r['msgid'] or '-':12}  {_when(r['start'])}  {r['status']:<10}  {sender}"
               f"{size}{flag}")
    if sess:
        extras = []
        if sess["helo"]:
            extras.append(f"({sess['helo']})")
        extras.append(f"session {sess['sid']} [{sess['file']}:{sess['line']}]")
        if sess["tls"]:
            extras.append("TLS")
        if sess["auth"] and sess["auth"]["ok"]:
            extras.append(f"auth {sess['auth']['user'] or sess['auth']['mechanism']}")
        if sess["missing"]:
            extras.append("incomplete: log lacks the session's " + " and ".join(sess["missing"]))
        out.append(f"  from {sess['peer']} " + " ".join(extras))
    elif r["bounce_of"]:
        out.append(f"  bounce of {r['bounce_of']}")
    else:
        out.append("  received before this log began")
    if r["reason"] and r["status"] != "delivered":
        out.append(f"  why: {r['reason']}")
    width = max((len(x["address"]) for x in r["recipients"]), default=0)
    for x in r["recipients"]:
        out.append(f"  {x['address']:<{width}}  {x['status']:<10}  {_rcpt_detail(x)}".rstrip())
    if r["bounce"]:
        b = r["bounce"]
        to = ", ".join(x["address"] for x in b["recipients"]) or "?"
        out.append(f"  bounce {b['msgid']} to {to}: {b['status']}")
    for a in r.get("queue_actions", ()):
        detail = f": {a['detail']}" if a["detail"] else ""
        out.append(f"  {_short(a['time'])} {a['action']} by {a['by']}{detail}")
    return "\n".join(out)


def _rcpt_detail(x: dict) -> str:
    st = x["status"]
    if st in ("refused", "rejected", "tempfailed", "pending"):
        return x["reply"] or ""
    if x["route"] == "local" and not x["attempts"]:
        return "local mailbox" if st == "delivered" else (x["reply"] or "")
    parts = []
    if x["host"]:
        parts.append(f"via {x['host']} [{x['ip']}]" if x["ip"] else f"via {x['host']}")
    if st == "delivered":
        if x["queued_as"]:
            parts.append(f"queued as {x['queued_as']}")
        if x["delay"] is not None:
            parts.append(f"after {_duration(x['delay'])}")
    elif x["remote_reply"]:
        parts.append(x["remote_reply"])
    if x["deferrals"]:
        parts.append(f"deferred {x['deferrals']}x")
    if x["next_retry"] and st == "deferred":
        parts.append(f"next retry {x['next_retry']}")
    return " ".join(parts)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


# -- explain ------------------------------------------------------------------------------------
def explain(record: dict) -> str:
    """The message's whole story: every line of its sessions, in order, with notes."""
    out = [text(record), ""]
    stories: list[tuple[str, dict]] = []
    if record["session"]:
        stories.append(("received", record["session"]))
    stories += [("delivery attempt", d["session"]) for d in record["deliveries"]]
    if record["bounce"]:
        stories += [("bounce delivery", d["session"]) for d in record["bounce"]["deliveries"]]
    for title, sess in stories:
        who = f"{'to' if sess['direction'] == 'out' else 'from'} {sess['peer']}"
        out.append(f"── {title}: session {sess['sid']} {who} ({sess['file']}:{sess['line']})")
        lines = sess.get("log")
        if not lines:
            out.append("   (lines not kept)")
        width = min(max((len(t) for *_, t in lines or ()), default=0), 110)
        for _, _, raw in lines or ():
            note = annotate(raw, sess["direction"])
            out.append(f"{raw:<{width}}  # {note}" if note else raw)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def annotate(raw: str, direction: str) -> str:
    """A plain-language note for one log line, or "" when the line speaks for itself."""
    ll = fmt.parse_line(raw)
    if ll is None:
        return "not a transaction-log line"
    served = direction != "out"
    k = ll.kind
    if k is Kind.CONNECTED:
        return "the client connected" if served else "connected to the remote server"
    if k is Kind.DISCONNECTED:
        return "the session ended"
    if k is Kind.START_PROCESSING:
        return "end of data: checks and queueing begin"
    if k is Kind.BYTES_RECEIVED:
        return f"received the message: {ll.nbytes} bytes"
    if k is Kind.BYTES_SENT:
        return f"sent the message: {ll.nbytes} bytes"
    if k is Kind.SUMMARY and ll.summary:
        return _summary_note(ll.summary, served)
    if k is Kind.TEXT:
        return _text_note(ll.text)
    t = ll.text
    command = (k is Kind.RECEIVED) == served
    return _command_note(t, served) if command else _reply_note(t, served)


def _summary_note(s: fmt.Summary, served: bool) -> str:
    if served:
        return {"OK": f"accepted for delivery to {s.rcpt} as {s.msgid}",
                "REJECTED": f"refused at end of data for {s.rcpt}",
                "DEFERRED": f"temporarily refused for {s.rcpt}: the client must retry"}.get(
            s.status, f"{s.status} for {s.rcpt}")
    return {"OK": f"delivered to {s.rcpt}",
            "DEFERRED": f"delivery to {s.rcpt} deferred: it will be retried",
            "FAILED": f"delivery to {s.rcpt} failed for good: a bounce goes back to the sender",
            }.get(s.status, f"{s.status} for {s.rcpt}")


def _command_note(t: str, served: bool) -> str:
    who = "the client" if served else "we"
    verb = t[:4].upper()
    arg = t[5:].strip()
    if verb in ("EHLO", "HELO"):
        return f"{who} identified {'itself' if served else 'ourselves'} as {arg}"
    if verb == "MAIL":
        sender = arg.partition(":")[2].split(" ", 1)[0].strip("<>") or "<> (a bounce)"
        return f"{who} named the sender {sender}"
    if verb == "RCPT":
        return f"{who} named a recipient {arg.partition(':')[2].split(' ', 1)[0].strip('<>')}"
    if verb == "DATA":
        return f"{who} asked to send the message"
    if verb == "STAR":
        return f"{who} asked to switch to TLS"
    if verb == "AUTH":
        return f"{who} started to authenticate ({arg.split(' ', 1)[0]})"
    if verb == "RSET":
        return f"{who} reset the transaction"
    if verb == "QUIT":
        return f"{who} said goodbye"
    if t == fmt.SECRET:
        return "a secret (never logged)"
    return ""


def _reply_note(t: str, served: bool) -> str:
    code = t[:3]
    if len(t) > 3 and t[3] == "-":
        return ""
    if served:
        if code == "220" and "TLS" not in t:
            return "we greeted the client"
        if "Message id " in t:
            msgid = t.split("Message id ", 1)[1].split(" ", 1)[0]
            return f"accepted for delivery as {msgid}"
        if "Sender ok" in t:
            return "sender accepted"
        if "Recipient ok; will forward" in t:
            return "recipient accepted: we relay it to another server"
        if "Recipient ok" in t:
            return "recipient exists (local mailbox)"
        if code == "235":
            return "authentication succeeded"
        if code[:1] in ("4", "5"):
            return "we refused: for now (the client may retry)" if code[:1] == "4" else \
                "we refused: for good"
        return ""
    if code == "220" and "TLS" not in t:
        return "the remote server greeted us"
    if "queued as " in t:
        queue_id = (t.split("queued as ", 1)[1].split() or ["?"])[0]
        return f"remote server accepted: queued as {queue_id}"
    if code[:1] == "4":
        return "remote server refused for now (we retry later)"
    if code[:1] == "5":
        return "remote server refused for good"
    return ""


def _text_note(t: str) -> str:
    mx = fmt.parse_dns_mx(t)
    if mx:
        domain, hosts, err = mx
        if err:
            return f"could not look up MX for {domain}: {err}"
        return f"looked up MX for {domain}: {len(hosts)} server(s), best first"
    at = fmt.parse_connecting(t)
    if at:
        host, ip, _port, err = at
        where = f"{host} ({ip})" if ip else host
        return f"could not connect to {where}: {err}" if err else f"connecting to {where}"
    b = fmt.parse_bounce(t)
    if b:
        return f"a bounce ({b[0]}) goes back to the sender of {b[1]}"
    retry = fmt.parse_next_retry(t)
    if retry:
        return f"will try again at {retry}"
    low = t.lower()
    if "sender" in low and ("mx" in low or "domain" in low):
        return "sender checked: domain " + t.split(": ", 1)[-1]
    if "reverse dns" in low or "rdns" in low:
        return "client's reverse DNS checked"
    if low.startswith("tls"):
        return "the session is now encrypted"
    if "authenticated" in low:
        return "the client logged in"
    return ""
