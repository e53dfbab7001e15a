"""Fixtures for end-to-end tests: real daemons as subprocesses on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by a module: example.test with alice, bob and an alias team → both."""
    root: Path = tmp_path_factory.mktemp("mf")
    daemon = Daemon(root, overrides={"limits": {"recipients": 5, "message_size": 100_000,
                                                "idle_timeout": 3}})
    daemon.add_user("alice@example.test")
    daemon.add_user("bob@example.test")
    daemon.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    with daemon:
        yield daemon
