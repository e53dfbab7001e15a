"""Failed web logins count like failed SMTP AUTH ([protection] max_auth_failures), through the
real daemon: the address is blocked for the web UI and for SMTP alike, and `mailferry block
remove` lets it back in."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.daemon import Daemon
from tests.support.dialog import Dialog

ADMIN, PASSWORD = "admin@example.test", "correct horse battery"


def test_web_login_guessing_blocks_the_address(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "d", http=True, overrides={
        "http": {"admins": [ADMIN]},  # admins named: logins even on loopback
        "relay": {"networks": []},  # so that 127.0.0.1 is counted like any client
        "protection": {"max_auth_failures": 3},
    })
    daemon.add_user(ADMIN, PASSWORD)
    with daemon, httpx.Client(base_url=daemon.http_url, timeout=20) as web:
        assert web.get("/api/sessions", auth=(ADMIN, PASSWORD)).status_code == 200
        for _ in range(2):  # the Basic header of a tool, then the login form
            assert web.get("/api/sessions", auth=(ADMIN, "guess")).status_code == 401
        page = web.get("/login")
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = web.post("/login", data={"user": ADMIN, "password": "guess", "csrf_token": token,
                                     "next": "/sessions"},
                     headers={"Origin": daemon.http_url.rstrip("/")})
        assert r.status_code == 401
        daemon.wait_line("Blocked 127.0.0.1 for 3600 s: AUTHFAIL (3 failed AUTH attempts in 600 s)")
        # Blocked everywhere, the right password included.
        refused = web.get("/api/sessions", auth=(ADMIN, PASSWORD))
        assert refused.status_code == 403 and "blocked" in refused.text
        with Dialog(daemon.host, daemon.port) as d:
            assert d.banner == (554, ["5.7.1 Access denied: your address is blocked (AUTHFAIL)"])
        assert "127.0.0.1  AUTHFAIL" in daemon.cli("block", "list").stdout
        daemon.cli("block", "remove", "127.0.0.1")
        # The server notices the removal within a fraction of a second.
        for _ in range(50):
            if web.get("/api/sessions", auth=(ADMIN, PASSWORD)).status_code == 200:
                break
            time.sleep(0.1)
        assert web.get("/api/sessions", auth=(ADMIN, PASSWORD)).status_code == 200
