"""The JSON API of a real running daemon, over real HTTP: sessions, messages, report, CSRF."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.web import PEER_HOST, Scene, mail_scene, send


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with mail_scene(tmp_path_factory.mktemp("web")) as s:
        yield s


@pytest.fixture
def client(scene: Scene) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scene.daemon.http_url, timeout=10) as c:
        yield c


def _get(client: httpx.Client, path: str, **params: object) -> dict:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_sessions_list_served_and_connected(client: httpx.Client, scene: Scene) -> None:
    sessions = _get(client, "/api/sessions")["sessions"]
    served = [s for s in sessions if s["kind"] == "S" and scene.local_msgid in s["messages"]]
    assert len(served) == 1
    s = served[0]
    assert (s["peer"], s["helo"], s["state"]) == ("127.0.0.1", "client.example.test", "success")
    assert s["duration"] is not None and s["duration"] >= 0
    # The delivery connection stays open a moment for reuse (yellow), then closes.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        connected = [s for s in _get(client, "/api/sessions")["sessions"]
                     if s["kind"] == "C" and scene.relayed_msgid in s["messages"]]
        if connected and all(c["state"] != "active" for c in connected):
            break
        time.sleep(0.2)
    assert connected
    # 550 for one recipient: the delivery session is red (partial), like IceWarp's failed ones.
    assert {c["state"] for c in connected} == {"failed"}
    only_c = _get(client, "/api/sessions", kind="C")["sessions"]
    assert only_c and all(x["kind"] == "C" for x in only_c)


def test_session_detail_has_annotated_lines(client: httpx.Client, scene: Scene) -> None:
    s = next(x for x in _get(client, "/api/sessions")["sessions"]
             if scene.local_msgid in x["messages"] and x["kind"] == "S")
    detail = _get(client, f"/api/sessions/{s['file']}/{s['line']}")
    lines = detail["lines"]
    assert lines[0]["line"] == s["line"] and "Connected" in lines[0]["text"]
    assert lines[-1]["text"].endswith("Disconnected")
    assert all(f"[{s['sid']}]" in x["text"] for x in lines)
    notes = {x["note"] for x in lines}
    assert "the client identified itself as client.example.test" in notes
    assert f"accepted for delivery as {scene.local_msgid}" in notes
    # The line numbers are the file's own: the log file says the same at those lines.
    text = (scene.daemon.log_dir / s["file"]).read_text().splitlines()
    assert all(text[x["line"] - 1] == x["text"] for x in lines)


def test_message_search_by_each_filter(client: httpx.Client, scene: Scene) -> None:
    def ids(**q: object) -> set[str]:
        return {m["msgid"] for m in _get(client, "/api/messages", **q)["messages"]}

    assert scene.local_msgid in ids(sender="bob@example.test")
    assert scene.relayed_msgid not in ids(sender="bob@example.test")
    assert ids(rcpt="@c.test") >= {scene.relayed_msgid}
    assert ids(msgid=scene.local_msgid) == {scene.local_msgid}
    assert {scene.local_msgid, scene.relayed_msgid} <= ids(ip="127.0.0.0/8")
    assert scene.relayed_msgid in ids(ip=PEER_HOST)  # the remote server's address
    assert ids(status="failed") == {scene.relayed_msgid}
    assert scene.local_msgid in ids(since="00:00", until="23:59:59")
    bad = client.get("/api/messages", params={"since": "yesterday"})
    assert bad.status_code == 400 and "HH:MM" in bad.json()["detail"]
    assert client.get("/api/messages", params={"status": "nope"}).status_code == 422


def test_message_timeline_to_delivery_and_bounce(client: httpx.Client, scene: Scene) -> None:
    detail = _get(client, f"/api/messages/{scene.relayed_msgid}")
    assert detail["message"]["status"] == "failed"
    kinds = [e["kind"] for e in detail["timeline"]]
    assert kinds[0] == "received" and "delivery" in kinds and "bounce" in kinds
    bounce = next(e for e in detail["timeline"] if e["kind"] == "bounce")
    assert "alice@example.test" in bounce["title"] and "nobody@c.test" in bounce["title"]
    delivery = next(e for e in detail["timeline"] if e["kind"] == "delivery")
    assert PEER_HOST in delivery["title"]
    assert any("550 5.1.1" in r and "User unknown" in r for r in delivery["replies"])
    by_rcpt = {r["address"]: r for r in detail["recipients"]}
    assert by_rcpt["carol@c.test"]["status"] == "delivered"
    assert by_rcpt["nobody@c.test"]["status"] == "failed"
    assert "User unknown" in by_rcpt["nobody@c.test"]["remote_reply"]
    # Every session of the timeline opens in the session view.
    for e in detail["timeline"]:
        if e["session_id"]:
            file, line = e["session_id"].split(":")
            assert _get(client, f"/api/sessions/{file}/{line}")["lines"]
    local = _get(client, f"/api/messages/{scene.local_msgid}")
    assert [e["kind"] for e in local["timeline"]] == ["received", "delivery"]
    assert "local mailbox of alice@example.test" in local["timeline"][1]["title"]
    assert client.get("/api/messages/MFNOSUCH0000").status_code == 404


def test_report_is_mailferry_report(client: httpx.Client, scene: Scene) -> None:
    """The Report page's numbers are those of `mailferry report` over the same log."""
    import json

    deadline = time.monotonic() + 15  # until the delivery connection kept for reuse closes
    while time.monotonic() < deadline and _get(client, "/api/sessions", state="active")["total"]:
        time.sleep(0.2)
    rep = _get(client, "/api/report")
    cli = json.loads(scene.daemon.cli("report", "--json").stdout)
    assert rep["totals"] == cli["totals"]
    assert rep["delivery_delay"] == cli["delivery_delay"]
    assert {h["hour"]: h["received"] for h in rep["per_hour"] if h["received"]} == \
        {h: v["received"] for h, v in cli["per_hour"].items() if v["received"]}
    t = rep["totals"]
    assert t["messages_received"] >= 2 and t["recipients_failed"] == 1
    assert sum(h["bounced"] for h in rep["per_hour"]) == 1
    assert sum(c["count"] for c in rep["delay_histogram"]) == rep["delivery_delay"]["count"]
    assert rep["delivery_delay"]["count"] >= 1  # carol, relayed


def test_new_mail_shows_up_without_a_restart(client: httpx.Client, scene: Scene) -> None:
    msgid = send(scene.daemon, "bob@example.test", ["alice@example.test"], "later")
    deadline = time.monotonic() + 10
    found: dict = {}
    while time.monotonic() < deadline:
        found = _get(client, "/api/messages", msgid=msgid)
        if found["messages"]:
            break
        time.sleep(0.2)
    assert [m["msgid"] for m in found["messages"]] == [msgid]


def test_live_session_is_active(client: httpx.Client, scene: Scene) -> None:
    import smtplib

    with smtplib.SMTP(scene.daemon.host, scene.daemon.port) as smtp:
        smtp.ehlo("still.talking.test")
        deadline = time.monotonic() + 10
        active: list = []
        while time.monotonic() < deadline and not active:
            active = [s for s in _get(client, "/api/sessions", state="active")["sessions"]
                      if s["helo"] == "still.talking.test"]
            time.sleep(0.1)
        assert active and active[0]["kind"] == "S"
        detail = _get(client, f"/api/sessions/{active[0]['file']}/{active[0]['line']}")
        assert detail["session"]["state"] == "active"
        assert any("ehlo still.talking.test" in x["text"].lower() for x in detail["lines"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = [s for s in _get(client, "/api/sessions")["sessions"]
                if s["helo"] == "still.talking.test"]
        if done and done[0]["state"] != "active":
            break
        time.sleep(0.1)
    assert done[0]["state"] == "success"


def test_posts_need_the_csrf_token_and_our_origin(client: httpx.Client, scene: Scene) -> None:
    assert client.post("/api/queue/flush").status_code == 403
    token = _get(client, "/api/whoami")["csrf_token"]
    headers = {"X-CSRF-Token": token}
    # Right token, but a page of another site sent it.
    foreign = client.post("/api/queue/flush", headers={**headers,
                                                       "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    # A token is bound to its session cookie: another client's cookie does not fit.
    with httpx.Client(base_url=str(client.base_url)) as other:
        assert other.post("/api/queue/flush", headers=headers).status_code == 403
    # Right token, own origin: the queue is flushed.
    own = client.post("/api/queue/flush", headers={**headers,
                                                   "Origin": str(client.base_url).rstrip("/")})
    assert own.status_code == 200 and own.json() == {"ok": True, "message": "flushed the queue"}
    scene.daemon.wait_line("message(s) flushed by local user (web UI, 127.0.0.1)")


def test_loopback_server_refuses_other_host_names(client: httpx.Client) -> None:
    """DNS rebinding: a name of another site resolved to 127.0.0.1 must not read the UI."""
    r = client.get("/api/sessions", headers={"Host": "attacker.example:8025"})
    assert r.status_code == 400
    assert client.get("/api/sessions", headers={"Host": "localhost"}).status_code == 200


def test_cookie_flags_and_metrics(client: httpx.Client) -> None:
    r = client.get("/sessions")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")


def test_pages_render(client: httpx.Client, scene: Scene) -> None:
    for path in ("/sessions", "/messages", "/messages?rcpt=%40c.test",
                 f"/messages/{scene.relayed_msgid}", "/report", "/queue", "/api-docs"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
    assert scene.relayed_msgid in client.get("/messages?rcpt=%40c.test").text
    report = client.get("/report").text
    assert "<svg" in report and "messages per hour" in report
    assert client.get("/messages/NOSUCH").status_code == 404


def test_http_port_in_the_banner_and_off_by_config(tmp_path: Path, scene: Scene) -> None:
    from tests.support.daemon import Daemon

    out = scene.daemon.proc.stdout.read1(4096).decode() if scene.daemon.proc else ""
    assert f"web UI and API   {scene.daemon.http_url}" in out
    off = Daemon(tmp_path / "off")
    with off:
        banner = off.proc.stdout.read1(4096).decode()
    assert "web UI and API   (off)" in banner


def test_busy_http_port_is_an_error_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.support.daemon import Daemon

    first = Daemon(tmp_path / "first", http=True)
    with first:
        second = Daemon(tmp_path / "second", http=True)
        # The same HTTP port as the first one's: the second must say so and stop.
        second.config.write_text(second.config.read_text().replace(
            f"127.0.0.1:{second.http_port}", f"127.0.0.1:{first.http_port}"))
        done = subprocess.run([sys.executable, "-m", "mailferry.cli", "serve", "--config",
                               str(second.config)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.http_port} (http)" in done.stderr
        assert "Traceback" not in done.stderr
        with socket.create_connection((first.host, first.http_port), timeout=5):
            pass  # the first one still serves
    assert first.proc is not None and first.proc.returncode == 0


def test_queue_list_hold_release(client: httpx.Client, scene: Scene) -> None:
    token = _get(client, "/api/whoami")["csrf_token"]
    post = {"headers": {"X-CSRF-Token": token}}
    msgid = scene.deferred_msgid
    [item] = [i for i in _get(client, "/api/queue")["items"] if i["id"] == msgid]
    assert item["state"] == "deferred" and item["sender"] == "bob@example.test"
    assert "451 4.7.1" in item["last_error"]
    assert [r["address"] for r in item["recipients"]] == ["slow@c.test"]
    r = client.post(f"/api/queue/{msgid}/hold", **post)
    assert r.status_code == 200 and r.json()["ok"]
    assert _get(client, f"/api/queue/{msgid}")["state"] == "held"
    again = client.post(f"/api/queue/{msgid}/hold", **post)
    assert again.status_code == 409 and "already on hold" in again.json()["detail"]
    # The hold is part of the message's story, with who did it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = _get(client, f"/api/messages/{msgid}")["timeline"]
        if any(e["kind"] == "queue" for e in events):
            break
        time.sleep(0.2)
    held = next(e for e in events if e["kind"] == "queue")
    assert held["status"] == "held" and "local user (web UI, 127.0.0.1)" in held["title"]
    r = client.post(f"/api/queue/{msgid}/release", **post)
    assert r.status_code == 200
    detail = _get(client, f"/api/queue/{msgid}")
    assert detail["state"] != "held" and "Subject" in str(detail["headers"])
    missing = client.post("/api/queue/MFNOSUCH0000/hold", **post)
    assert missing.status_code == 404 and "no message" in missing.json()["detail"]
    assert client.get("/api/queue/MFNOSUCH0000").status_code == 404


def test_admins_on_loopback_mean_logins(tmp_path: Path) -> None:
    """A reverse proxy on this machine reaches loopback too: naming admins asks for logins."""
    from tests.support.daemon import Daemon

    d = Daemon(tmp_path / "admins", http=True,
               overrides={"http": {"admins": ["admin@example.test"]}})
    d.cli("user", "add", "admin@example.test", "--password", "pass word 1")
    with d, httpx.Client(base_url=d.http_url, timeout=10) as c:
        assert c.get("/api/sessions").status_code == 401
        assert c.get("/sessions").status_code == 303
        assert c.get("/api/sessions", auth=("admin@example.test", "pass word 1")).status_code \
            == 200
        # With logins, the Host check against DNS rebinding is not needed (nor done).
        r = c.get("/api/whoami", auth=("admin@example.test", "pass word 1"),
                  headers={"Host": "mail.example.test"})
        assert r.status_code == 200 and r.json()["user"] == "admin@example.test"
