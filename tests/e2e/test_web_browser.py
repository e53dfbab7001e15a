"""The web UI in a real browser (Debian's headless Chromium through Playwright), as a person uses
it: mail goes through the server, then sessions → one session's log, a message search → its
delivery timeline, the report. Screenshots of each step are saved as test artifacts
($MAILFERRY_ARTIFACTS, default ./test-artifacts).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.web import Scene, mail_scene, send

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def artifacts() -> Path:
    path = Path(os.environ.get("MAILFERRY_ARTIFACTS", "test-artifacts")) / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with mail_scene(tmp_path_factory.mktemp("browser")) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the browser tests need Debian's chromium "
                    "(apt-get install chromium; scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, scene: Scene):
    context = browser.new_context(base_url=scene.daemon.http_url.rstrip("/"),
                                  viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    assert errors == [], errors  # no script errors, no refused resources (CSP)


def shot(page, name: str) -> Path:
    path = artifacts() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


def test_sessions_then_one_session_log(page, scene: Scene) -> None:
    fresh = send(scene.daemon, "bob@example.test", ["alice@example.test"], "seen in a browser",
                 helo="browser-test.example")
    page.goto("/sessions")
    row = page.locator("#sessions tbody tr", has_text="browser-test.example")
    row.first.wait_for(timeout=10_000)
    assert page.locator("#sessions tbody tr.state-success").count() >= 2
    assert "S" in row.first.locator("td.kind").inner_text()
    assert fresh in row.first.inner_text()
    # A delivery session (C) in red: one recipient got 550.
    failed_c = page.locator("#sessions tbody tr.state-failed", has_text=scene.relayed_msgid)
    assert failed_c.count() >= 1
    colour = failed_c.first.locator("td").first.evaluate(
        "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(251, 211, 208)"
    shot(page, "01-sessions")
    row.first.locator("a.open").click()
    page.wait_for_url("**/sessions/*/*")
    log = page.locator("#session-log tbody tr")
    assert log.count() >= 10
    assert "Connected" in log.first.inner_text()
    notes = page.locator("#session-log td.note").all_inner_texts()
    assert "the client identified itself as browser-test.example" in notes
    assert f"accepted for delivery as {fresh}" in notes
    shot(page, "02-session-log")


def test_search_a_message_and_see_its_timeline(page, scene: Scene) -> None:
    page.goto("/messages")
    page.fill("input[name=rcpt]", "nobody@c.test")
    page.click("#search button[type=submit]")
    page.wait_for_url("**/messages?*")
    result = page.locator("#messages tbody tr")
    assert result.count() == 1 and scene.relayed_msgid in result.first.inner_text()
    shot(page, "03-message-search")
    result.first.locator(f"a[href='/messages/{scene.relayed_msgid}']").click()
    page.wait_for_url(f"**/messages/{scene.relayed_msgid}")
    events = page.locator("#timeline > li")
    texts = events.all_inner_texts()
    assert "received from 127.0.0.1" in texts[0]
    delivery = next(t for t in texts if "delivery attempt to 127.0.0.3" in t)
    assert "550 5.1.1" in delivery and "User unknown" in delivery
    assert any("bounce" in t and "alice@example.test" in t for t in texts)
    recipients = page.locator("#recipients tbody tr").all_inner_texts()
    assert any("carol@c.test" in r and "delivered" in r for r in recipients)
    assert any("nobody@c.test" in r and "failed" in r for r in recipients)
    shot(page, "04-message-timeline")
    # One click from the timeline to the delivery session's log.
    events.filter(has_text="delivery attempt").first.locator("a.open").click()
    page.wait_for_url("**/sessions/*/*")
    assert "C" in page.locator("h1").inner_text()
    assert any("remote server refused for good" in n
               for n in page.locator("#session-log td.note").all_inner_texts())
    shot(page, "05-delivery-session")


def test_report_with_charts(page) -> None:
    page.goto("/report")
    assert int(page.locator("#totals .card .big").first.inner_text()) >= 2
    bars = page.locator("#traffic-chart svg rect")
    assert bars.count() >= 3
    assert page.locator("#delay-chart svg rect").count() >= 1
    shot(page, "06-report")


def test_hold_and_release_a_queued_message(page, scene: Scene) -> None:
    msgid = scene.deferred_msgid
    page.goto("/queue")
    row = page.locator(f"#queue tr[data-msgid='{msgid}']")
    assert row.locator(".status").inner_text() == "deferred"
    assert "451 4.7.1" in row.inner_text() and "slow@c.test" in row.inner_text()
    shot(page, "07-queue")
    row.locator("button.act-hold").click()
    page.wait_for_url("**/queue?done=*")
    assert page.locator("#done").inner_text() == f"Done — hold: {msgid}"
    row = page.locator(f"#queue tr[data-msgid='{msgid}']")
    assert row.locator(".status").inner_text() == "held"
    assert row.locator("button.act-release").count() == 1
    assert row.locator("button.act-hold").count() == 0
    shot(page, "08-queue-held")
    row.locator("button.act-release").click()
    page.wait_for_url("**/queue?done=*")
    row = page.locator(f"#queue tr[data-msgid='{msgid}']")
    assert row.locator(".status").inner_text() in ("deferred", "active")
    shot(page, "09-queue-released")
    # The message's page tells who held and released it.
    deadline = time.monotonic() + 10
    actions: list[str] = []
    while len(actions) < 2 and time.monotonic() < deadline:  # the log is flushed every 0.5 s
        page.goto(f"/messages/{msgid}")
        actions = page.locator("#timeline li.kind-queue").all_inner_texts()
    assert any("held by local user (web UI" in a for a in actions)
    assert any("released by local user (web UI" in a for a in actions)
    shot(page, "10-message-queue-actions")
