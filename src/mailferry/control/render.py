"""Human output of ``mailferry queue list|show`` and ``mailferry status`` (``--json`` prints the
service's dicts as they are). Pure functions of those dicts and the current time."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: the two largest units."""
    s = int(max(0, seconds))
    days, hours, minutes = s // 86400, s // 3600 % 24, s // 60 % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s % 60}s"
    return f"{s}s"


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    if epoch <= now:
        return "now"
    return f"in {duration(epoch - now)}"


def clock(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def queue_list(messages: list[dict], now: float) -> str:
    """A table, one block per message: the message line, then one line per recipient."""
    if not messages:
        return "The queue is empty.\n"
    rows = [("ID", "STATE", "AGE", "SIZE", "NEXT ATTEMPT", "TRIES", "SENDER")]
    for m in messages:
        rows.append((m["id"], m["state"], duration(m["age"]), size(m["size"]),
                     when(m["next_attempt"], now) if m["state"] != "held" else "on hold",
                     str(m["attempts"]), f"<{m['sender']}>"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for k, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) +
                   "  " + row[-1])
        if k == 0:
            continue
        m = messages[k - 1]
        for r in m["recipients"]:
            reply = f"  {r['last_reply']}" if r["last_reply"] and r["state"] != "delivered" \
                else ""
            out.append(f"    -> <{r['address']}>  {r['state']}{reply}")
        if m["last_error"]:
            out.append(f"    last error: {m['last_error']}")
    counts: dict[str, int] = {}
    for m in messages:
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    total = sum(m["size"] for m in messages)
    out.append("")
    out.append(f"{len(messages)} message(s), {size(total)}: {by_state}")
    return "\n".join(out) + "\n"


def queue_show(m: dict, now: float) -> str:
    env = m["envelope"]
    out = [
        f"Message {m['id']}  ({m['state']})",
        f"  received     {clock(m['received_at'])} ({duration(m['age'])} ago) from "
        f"{env['client_ip'] or 'this server'}{' (' + env['helo'] + ')' if env['helo'] else ''}",
        f"  sender       <{m['sender']}>",
        f"  size         {size(m['size'])}",
        f"  attempts     {m['attempts']}",
        f"  next attempt {'on hold' if m['state'] == 'held' else when(m['next_attempt'], now)}",
    ]
    if m["last_error"]:
        out.append(f"  last error   {m['last_error']}")
    for key, value in sorted(env["extra"].items()):
        out.append(f"  {key:<12} {value}")
    out.append("")
    out.append("Recipients:")
    for r in m["recipients"]:
        orig = f" (sent to <{r['original']}>)" if r["original"] != r["address"] else ""
        where = "local mailbox" if r["local"] else (r["remote"] or "remote")
        out.append(f"  <{r['address']}>{orig}  {r['state']}, {r['attempts']} attempt(s), {where}")
        if r["last_reply"]:
            out.append(f"      last reply: {r['last_reply']}")
    out.append("")
    out.append("History (queue state):")
    if not m["history"]:
        out.append("  (no delivery attempt recorded yet)")
    for e in m["history"]:
        who = f" <{e['recipient']}>" if e.get("recipient") else ""
        line = f"  {clock(e['time']) if e.get('time') else ' ' * 19}  {e['event']}{who}"
        if e.get("reply"):
            line += f": {e['reply']}"
        if e.get("next_attempt"):
            line += f" (next attempt {clock(e['next_attempt'])})"
        out.append(line)
    out.append("")
    out.append("Headers:")
    out.extend(f"  {h}" for h in m["headers"].splitlines())
    out.append("")
    if m.get("trace"):
        out.append("Transaction log (as `mailferry trace --explain`):")
        out.append(m["trace"].rstrip("\n"))
    else:
        out.append("Transaction log: nothing about this message in the log files.")
    return "\n".join(out) + "\n"


def status(s: dict) -> str:
    q = s["queue"]
    out = [
        f"mailferry is running (pid {s['pid']}), up {duration(s['uptime'])} "
        f"since {clock(s['started_at'])}",
        f"  sessions open  {s['sessions']['open']}" + (
            " (" + ", ".join(f"{k}: {v}" for k, v in sorted(s["sessions"]["by_listener"].items()))
            + ")" if s["sessions"]["by_listener"] else ""),
        f"  queue          {q['total']} message(s): {q['active']} active, "
        f"{q['deferred']} deferred, {q['held']} held",
        f"  oldest         {duration(s['oldest_age']) if q['total'] else '-'}",
    ]
    if s["last_errors"]:
        out.append("  last errors:")
        for e in s["last_errors"]:
            out.append(f"    {clock(e['time'])}  {e['msgid']} <{e['recipient']}>  "
                       f"{e['status'].lower()}: {e['reply']}")
    else:
        out.append("  last errors    none since start")
    return "\n".join(out) + "\n"
