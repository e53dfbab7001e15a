"""web.auth: signed session cookies, CSRF tokens, origins, hosts, passwords; web.charts."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.config import HttpConfig
from mailferry.verify.users import Directory
from mailferry.web import charts
from mailferry.web.auth import Auth, WebSession, loopback_host, same_origin

PUBLIC = HttpConfig(address=("192.0.2.1", 8025), admins=("admin@example.test",))


def test_cookie_round_trip_and_tampering() -> None:
    auth = Auth(PUBLIC, None)
    ws = auth.new_session("admin@example.test")
    value = auth.cookie_value(ws)
    assert auth.read_cookie(value) == ws
    body, mac = value.split(".")
    forged = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(
            b"admin@", b"other@")).decode().rstrip("=")
    assert auth.read_cookie(f"{forged}.{mac}") is None
    assert auth.read_cookie(value[:-1] + ("0" if value[-1] != "0" else "1")) is None
    # Another process (another key) does not accept it: a restart logs everyone out.
    assert Auth(PUBLIC, None).read_cookie(value) is None


def test_cookie_expires_and_follows_the_admin_list() -> None:
    auth = Auth(PUBLIC, None)
    old = WebSession("n", "admin@example.test", 1)
    assert auth.read_cookie(auth.cookie_value(old)) is None
    stranger = auth.new_session("someone@example.test")
    assert auth.read_cookie(auth.cookie_value(stranger)) is None
    assert Auth(HttpConfig(), None).login_required is False
    assert auth.login_required is True
    # Admins named on loopback: logins too (a proxy on this machine reaches loopback).
    assert Auth(HttpConfig(admins=("admin@example.test",)), None).login_required is True


@given(st.text(max_size=300))
def test_any_cookie_text_is_refused_quietly(text: str) -> None:
    assert Auth(PUBLIC, None).read_cookie(text) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    auth = Auth(PUBLIC, None)
    a, b = auth.new_session(), auth.new_session()
    assert auth.csrf_ok(a, auth.csrf_token(a))
    assert not auth.csrf_ok(a, auth.csrf_token(b))
    assert not auth.csrf_ok(a, None) and not auth.csrf_ok(a, "")


@pytest.mark.parametrize(("origin", "referer", "ok"), [
    ("http://127.0.0.1:8025", None, True),
    ("http://127.0.0.1:8025", "http://evil.example/", True),  # Origin decides
    ("http://evil.example", "http://127.0.0.1:8025/queue", False),
    ("https://127.0.0.1:8025", None, True),  # a TLS proxy in front: the browser says https
    ("ftp://127.0.0.1:8025", None, False),
    ("http://127.0.0.1:8026", None, False),
    ("null", None, False),
    (None, "http://127.0.0.1:8025/queue", True),
    (None, "http://127.0.0.1:8025.evil.example/", False),
    (None, None, True),  # curl: no browser, the CSRF token is what protects
])
def test_same_origin(origin: str | None, referer: str | None, ok: bool) -> None:
    assert same_origin(origin, referer, "127.0.0.1:8025") is ok


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:8025", True), ("127.1.2.3", True), ("[::1]:8025", True), ("localhost:8025", True),
    ("LOCALHOST", True), ("evil.example", False), ("127.0.0.1.evil.example", False),
    ("192.0.2.1:8025", False), ("", False), (None, False), ("[::1", False),
])
def test_loopback_host(host: str | None, ok: bool) -> None:
    assert loopback_host(host) is ok


@given(st.text(max_size=100), st.text(max_size=100))
def test_host_and_origin_checks_never_raise(host: str, origin: str) -> None:
    loopback_host(host)
    same_origin(origin, origin, host)


def test_passwords_are_checked_by_the_user_directory(tmp_path: Path) -> None:
    with Directory(tmp_path / "users.db", ["example.test"]) as directory:
        directory.add_user("admin@example.test", "s3cret pass")
        directory.add_user("user@example.test", "s3cret pass")
        auth = Auth(PUBLIC, directory)

        def check(user: str, password: str) -> bool:
            return asyncio.run(auth.check_password(user, password))

        assert check("admin@example.test", "s3cret pass")
        assert check(" Admin@Example.TEST ", "s3cret pass")
        assert not check("admin@example.test", "wrong")
        assert not check("user@example.test", "s3cret pass")  # a user, not an admin
        basic = base64.b64encode(b"admin@example.test:s3cret pass").decode()
        assert asyncio.run(auth.check_basic(f"Basic {basic}")) == "admin@example.test"
        assert asyncio.run(auth.check_basic("Basic !!!")) is None
        assert asyncio.run(auth.check_basic(f"Bearer {basic}")) is None


def test_bar_chart_is_valid_svg_with_escaped_labels() -> None:
    svg = charts.bar_chart(["10 <h>", "11"], {"received": [3, 0], "bounced": [1, 2]},
                           title="a & b")
    root = ET.fromstring(str(svg))
    rects = root.findall("{http://www.w3.org/2000/svg}rect")
    assert len(rects) == 4
    heights = [int(r.get("height")) for r in rects]
    assert max(heights) == 160 and 0 in heights  # the peak fills the height; zero is flat
    assert "10 <h>" in "".join(root.itertext())
    empty = ET.fromstring(str(charts.bar_chart([], {"x": []}, title="none")))
    assert empty.findall("{http://www.w3.org/2000/svg}rect") == []
