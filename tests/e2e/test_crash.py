"""Nothing lost: kill -9 the server while Postfix's smtp-source is sending, restart it, and
check that every message that got 250 is in a Maildir exactly once."""

from __future__ import annotations

import email
import re
import shutil
import smtplib
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.skipif(shutil.which("smtp-source") is None,
                                reason="Postfix's smtp-source is installed by scripts/setup.sh")

_MSGID = re.compile(rb"with E?SMTP id (MF[0-9A-Z]{10})")


def _msgid(path: Path) -> str:
    m = _MSGID.search(path.read_bytes())
    assert m, path
    return m.group(1).decode()


def _tracked_sender(daemon: Daemon, acked: list[str], stop: threading.Event) -> None:
    """A second client beside smtp-source that remembers exactly which messages got 250."""
    n = 0
    while not stop.is_set() and n < 5000:
        n += 1
        try:
            with smtplib.SMTP(daemon.host, daemon.port, timeout=5) as client:
                client.sendmail("tracker@remote.test", ["bob@example.test"],
                                f"Subject: tracked {n}\r\n\r\nbody {n}\r\n")
                acked.append(f"tracked {n}")
        except (OSError, smtplib.SMTPException):
            return  # the server died under us: whatever was not acked may or may not be there


def test_kill9_midway_loses_nothing_and_delivers_once(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "mf")
    daemon.add_user("alice@example.test")
    daemon.add_user("bob@example.test")
    daemon.start()
    acked: list[str] = []
    stop = threading.Event()
    tracker = threading.Thread(target=_tracked_sender, args=(daemon, acked, stop))
    source = subprocess.Popen(
        ["smtp-source", "-s", "10", "-m", "3000", "-l", "2048", "-f", "load@remote.test",
         "-t", "alice@example.test", f"{daemon.host}:{daemon.port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tracker.start()
    # Kill once a good part of the load has been accepted (bounded wait, event-driven).
    deadline = time.monotonic() + 60
    while len(acked) < 100 and time.monotonic() < deadline and source.poll() is None:
        time.sleep(0.05)
    daemon.kill9()
    stop.set()
    tracker.join(timeout=30)
    source.wait(timeout=60)
    assert len(acked) >= 100, "the load did not get going before the kill"

    daemon.start()  # restart: recovers the queue and finishes delivery
    try:
        bob = daemon.wait_messages("bob@example.test", len(acked), timeout=60)
        subjects = Counter(
            email.message_from_bytes(p.read_bytes())["Subject"] for p in bob)
        for subject in acked:
            assert subjects[subject] == 1, f"{subject}: {subjects[subject]} copies"
        # Exactly once for every message, tracked or not: no message ID appears twice.
        deadline = time.monotonic() + 30
        while daemon.queued() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.queued() == []
        ids = Counter(_msgid(p) for p in daemon.messages("alice@example.test") + bob)
        assert ids and max(ids.values()) == 1
        assert list((daemon.data / "queue" / "tmp").iterdir()) == []
    finally:
        daemon.stop()
