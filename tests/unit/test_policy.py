"""Relay and recipient policy, decided without sockets (the e2e tests cover the wire)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.address import parse_mailbox
from mailferry.config import default_config
from mailferry.inbound.policy import Policy
from mailferry.verify.users import Directory


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    config = default_config(tmp_path)
    directory = Directory(tmp_path / "users.db", ["example.test"])
    directory.add_user("alice@example.test", None)
    directory.add_user("postmaster@example.test", None)
    directory.add_alias("sales@example.test", ["alice@example.test", "out@remote.test"])
    return Policy(config, directory, resolver=None)


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_trusted_by_default(policy: Policy, ip: str) -> None:
    assert policy.client_trusted(ip)


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "junk"])
def test_others_are_not(policy: Policy, ip: str) -> None:
    assert not policy.client_trusted(ip)


def test_local_recipient_resolves_alias_targets(policy: Policy) -> None:
    v = policy.check_rcpt(parse_mailbox("Sales@EXAMPLE.test"), trusted=False)
    assert v.accepted and not v.forward
    assert set(v.targets) == {"alice@example.test", "out@remote.test"}


def test_alias_targets_local_or_remote(policy: Policy) -> None:
    assert policy.is_local("alice@example.test")
    assert not policy.is_local("out@remote.test")


def test_unknown_local_user_550(policy: Policy) -> None:
    v = policy.check_rcpt(parse_mailbox("nobody@example.test"), trusted=True)
    assert (v.reply.code, v.reply.enhanced) == (550, "5.1.1")
    assert v.evidence and "nobody@example.test" in v.evidence


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize("rcpt", ["a%b.test@example.test", '"a@b.test"@example.test',
                                  "b.test!a@example.test", "@example.test:a@b.test"])
def test_routing_tricks_refused_for_everyone(policy: Policy, rcpt: str, trusted: bool) -> None:
    v = policy.check_rcpt(parse_mailbox(rcpt), trusted=trusted)
    assert (v.reply.code, v.reply.enhanced) == (554, "5.7.1")


def test_remote_recipient_needs_trust(policy: Policy) -> None:
    assert policy.check_rcpt(parse_mailbox("x@remote.test"), trusted=True).forward
    refused = policy.check_rcpt(parse_mailbox("x@remote.test"), trusted=False)
    assert refused.reply.text == "Relay access denied"


@given(st.from_regex(r"[a-z0-9.%!+_-]{1,20}@[a-z0-9.-]{1,20}\.[a-z]{2,5}", fullmatch=True))
def test_strangers_never_reach_a_remote_domain(rcpt: str) -> None:
    """Whatever the address looks like, an untrusted client only ever gets a local mailbox."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        directory = Directory(Path(tmp) / "users.db", ["example.test"])
        directory.add_user("alice@example.test", None)
        policy = Policy(default_config(Path(tmp)), directory, resolver=None)
        try:
            address = parse_mailbox(rcpt)
        except ValueError:
            return
        v = policy.check_rcpt(address, trusted=False)
        if v.accepted:
            assert all(t.endswith("@example.test") for t in v.targets)
        directory.close()


# --- AUTH: whose sender an authenticated user may use ([policy] sender_must_match_auth) -------
@pytest.mark.parametrize(("sender", "allowed"), [
    ("alice@example.test", True), ("ALICE@Example.Test", True),
    ("sales@example.test", True),  # an alias that reaches alice
    (None, True),  # the null sender claims nobody's address
    ("postmaster@example.test", False), ("alice@remote.test", False),
    ("nobody@example.test", False),
])
def test_auth_sender(policy: Policy, sender: str | None, allowed: bool) -> None:
    address = parse_mailbox(sender) if sender is not None else None
    verdict = policy.check_auth_sender("alice@example.test", address)
    if allowed:
        assert verdict is None
    else:
        assert verdict is not None and (verdict.reply.code, verdict.reply.enhanced) == (553,
                                                                                       "5.7.1")
        assert "alice@example.test" in (verdict.evidence or "")


def test_check_login_runs_the_directory_check(tmp_path: Path) -> None:
    import asyncio

    directory = Directory(tmp_path / "users.db", ["example.test"])
    directory.add_user("bob@example.test", "right")
    policy = Policy(default_config(tmp_path), directory, resolver=None)

    async def both() -> tuple[bool, bool, bool]:
        return (await policy.check_login("Bob@example.test", "right"),
                await policy.check_login("bob@example.test", "wrong"),
                await policy.check_login("nobody@example.test", "right"))

    assert asyncio.run(both()) == (True, False, False)
