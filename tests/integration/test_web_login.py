"""The login a non-loopback [http] address requires, over a real socket.

Tests may only talk to loopback, and a loopback address needs no login: so the app is built for
a public address (as config.py would accept it, with admins) and served by the real embedded
uvicorn server on a loopback socket of its own.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from mailferry.config import HttpConfig
from mailferry.verify.users import Directory
from mailferry.web.app import create_app
from mailferry.web.server import HttpServer, bind
from mailferry.web.services import WebServices

ADMIN, PASSWORD = "admin@example.test", "correct horse battery"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("login")
    directory = Directory(root / "users.db", ["example.test"])
    directory.add_user(ADMIN, PASSWORD)
    directory.add_user("user@example.test", PASSWORD)
    services = WebServices(http=HttpConfig(address=("192.0.2.1", 8025), admins=(ADMIN,)),
                           log_dir=root / "log" / "smtp", directory=directory)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    server = HttpServer(create_app(services), sock, f"http://127.0.0.1:{port}/")
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield server.url.rstrip("/")
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    directory.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


def test_everything_but_login_needs_a_login(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as c:
        r = c.get("/sessions?kind=S")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/sessions%3Fkind%3DS"
        api = c.get("/api/sessions")
        assert api.status_code == 401 and api.headers["www-authenticate"].startswith("Basic")
        assert c.get("/metrics").status_code == 401
        assert c.get("/queue").status_code == 303
        assert c.get("/api/openapi.json").status_code == 200  # the description is public
        assert c.get("/login").status_code == 200


def test_basic_auth_for_tools(base_url: str) -> None:
    assert httpx.get(f"{base_url}/api/sessions", auth=(ADMIN, PASSWORD)).status_code == 200
    assert httpx.get(f"{base_url}/metrics", auth=(ADMIN, PASSWORD)).status_code == 200
    assert httpx.get(f"{base_url}/api/sessions", auth=(ADMIN, "nope")).status_code == 401
    # A mailferry user who is not in http.admins gets nothing.
    r = httpx.get(f"{base_url}/api/sessions", auth=("user@example.test", PASSWORD))
    assert r.status_code == 401
    # Basic is for tools: a page still wants the form login.
    assert httpx.get(f"{base_url}/sessions", auth=(ADMIN, PASSWORD)).status_code == 303


def test_login_form_flow(base_url: str) -> None:
    with httpx.Client(base_url=base_url, headers={"Origin": base_url}) as c:
        token = _csrf(c.get("/login?next=/report").text)
        before = dict(c.cookies)
        form = {"user": ADMIN, "password": PASSWORD, "next": "/report"}
        assert c.post("/login", data=form).status_code == 403  # no CSRF token
        bad = c.post("/login", data={**form, "password": "wrong", "csrf_token": token})
        assert bad.status_code == 401 and "Wrong user or password" in bad.text
        ok = c.post("/login", data={**form, "csrf_token": token})
        assert ok.status_code == 303 and ok.headers["location"] == "/report"
        assert dict(c.cookies) != before  # a new session at login (no fixation)
        page = c.get("/report")
        assert page.status_code == 200 and ADMIN in page.text
        assert c.get("/api/sessions").status_code == 200  # the cookie works for the API too
        # The cookie from before the login grants nothing.
        with httpx.Client(base_url=base_url, cookies=before) as old:
            assert old.get("/report").status_code == 303
        out = c.post("/logout", data={"csrf_token": _csrf(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert c.get("/report").status_code == 303


def test_login_redirects_only_to_own_pages(base_url: str) -> None:
    with httpx.Client(base_url=base_url, headers={"Origin": base_url}) as c:
        token = _csrf(c.get("/login").text)
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            r = c.post("/login", data={"user": ADMIN, "password": PASSWORD, "next": target,
                                       "csrf_token": token})
            assert r.headers["location"] == "/sessions", target
            c.cookies.clear()
            token = _csrf(c.get("/login").text)


def test_login_from_a_foreign_page_is_refused(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as c:
        token = _csrf(c.get("/login").text)
        r = c.post("/login", headers={"Origin": "http://evil.example"},
                   data={"user": ADMIN, "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 403
