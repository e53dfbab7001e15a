"""Fixtures shared by every test directory. Keep each fixture small; helpers live in support/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailferry.dns.resolver import Resolver
from tests.support.fakedns import FakeDNS

DATA = Path(__file__).parent / "data"


@pytest.fixture
def fakedns() -> Iterator[FakeDNS]:
    """A started fake DNS server on 127.0.0.1 (ephemeral port) with ``data/zones/default.zone``.

    Function-scoped, so records a test adds with ``fakedns.add(...)`` do not leak into others.
    """
    with FakeDNS([DATA / "zones" / "default.zone"]) as server:
        yield server


@pytest.fixture
def resolver(fakedns: FakeDNS) -> Resolver:
    """A resolver that asks only ``fakedns``; a short timeout keeps TIMEOUT tests quick."""
    return Resolver([fakedns.nameserver], timeout=0.5)
