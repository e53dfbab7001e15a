"""Identifiers (message IDs, session IDs) and envelope address parsing (RFC 5321 §4.1.2)."""

from __future__ import annotations

import calendar
import itertools
import random
import re
import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.address import Address, AddressError, parse_mailbox, split_path
from mailferry.ids import MessageIdFactory, SessionIdPool

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MSGID_RE = re.compile(r"MF[0-9A-HJKMNP-TV-Z]{10}")
EPOCH_2024 = calendar.timegm((2024, 1, 1, 0, 0, 0))


def decode(msgid: str) -> tuple[int, int]:
    """(seconds since 2024-01-01, counter) from an ID, as documented in ids.py (30 + 20 bits)."""
    value = 0
    for ch in msgid[2:]:
        value = value * 32 + CROCKFORD.index(ch)
    return value >> 20, value & 0xFFFFF


# --- MessageIdFactory -----------------------------------------------------------------------------
def test_ten_thousand_ids_are_unique_and_well_formed() -> None:
    factory = MessageIdFactory()
    ids = [factory.new() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for msgid in ids:
        assert MSGID_RE.fullmatch(msgid), msgid


def test_ten_thousand_ids_in_one_second_are_unique() -> None:
    factory = MessageIdFactory()
    now = time.time()
    ids = [factory.new(now) for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert {decode(i)[0] for i in ids} == {int(now) - EPOCH_2024}


def test_id_carries_the_second_it_was_made() -> None:
    factory = MessageIdFactory()
    before = int(time.time())
    msgid = factory.new()
    after = int(time.time())
    assert before - EPOCH_2024 <= decode(msgid)[0] <= after - EPOCH_2024
    assert decode(factory.new(EPOCH_2024 + 12345.9))[0] == 12345


def test_counter_goes_up_within_a_second() -> None:
    factory = MessageIdFactory()
    counters = [decode(factory.new(EPOCH_2024 + 5))[1] for _ in range(100)]
    assert all((b - a) % 2**20 == 1 for a, b in itertools.pairwise(counters))


def test_two_factories_started_in_the_same_second_do_not_share_a_counter() -> None:
    # The counter starts at a random point: equal starts have odds of 1 in 2**20 per pair.
    starts = {decode(MessageIdFactory().new(EPOCH_2024))[1] for _ in range(20)}
    assert len(starts) > 1


@settings(max_examples=300)
@given(st.integers(0, 2**30 - 2), st.integers(1, 10**6), st.integers(0, 50), st.integers(0, 50))
def test_ids_sort_by_time(second: int, later: int, burst1: int, burst2: int) -> None:
    """An ID made at a later second sorts after one made earlier, from the same factory or not,
    whatever the counters are doing (the counter only orders IDs within one second)."""
    t1 = EPOCH_2024 + second
    t2 = min(t1 + later, EPOCH_2024 + 2**30 - 1)
    a, b = MessageIdFactory(), MessageIdFactory()
    for _ in range(burst1):
        a.new(t1)
    for _ in range(burst2):
        b.new(t1)
    first = a.new(t1)
    assert first < a.new(t2)
    assert first < b.new(t2)
    assert b.new(t1) < a.new(t2 + 0.999)


def test_ids_made_over_time_are_sorted() -> None:
    factory = MessageIdFactory()
    times = sorted(random.Random(7).sample(range(EPOCH_2024, EPOCH_2024 + 10**8), 500))
    ids = [factory.new(t) for t in times]
    assert ids == sorted(ids)


# --- SessionIdPool --------------------------------------------------------------------------------
SID_RE = re.compile(r"[0-9A-F]{4}")


def test_session_ids_four_hex_digits_never_zero_no_duplicates() -> None:
    pool = SessionIdPool()
    ids = [pool.acquire() for _ in range(65535)]
    assert all(SID_RE.fullmatch(s) for s in ids)
    assert "0000" not in ids
    assert len(set(ids)) == 65535  # every ID from 0001 to FFFF exactly once
    with pytest.raises(RuntimeError):
        pool.acquire()


def test_session_id_reused_after_release() -> None:
    pool = SessionIdPool()
    ids = [pool.acquire() for _ in range(65535)]
    rng = random.Random(1)
    released = set(rng.sample(ids, 1000))
    for sid in released:
        pool.release(sid)
    again = {pool.acquire() for _ in range(1000)}
    assert again == released  # only the released ones come back, each once
    with pytest.raises(RuntimeError):
        pool.acquire()


def test_session_ids_wrap_around_skipping_open_ones() -> None:
    pool = SessionIdPool()
    held = [pool.acquire() for _ in range(100)]
    # Cycle through the whole space many times: the 100 held IDs must never be handed out.
    for _ in range(3 * 65535):
        sid = pool.acquire()
        assert sid not in held and sid != "0000"
        pool.release(sid)


@settings(max_examples=100)
@given(st.lists(st.one_of(st.just(None), st.integers(0, 10**6)), max_size=300))
def test_open_session_ids_never_collide(ops: list[int | None]) -> None:
    pool = SessionIdPool()
    open_ids: list[str] = []
    for op in ops:
        if op is None or not open_ids:
            sid = pool.acquire()
            assert SID_RE.fullmatch(sid) and sid != "0000"
            assert sid not in open_ids
            open_ids.append(sid)
        else:
            pool.release(open_ids.pop(op % len(open_ids)))


# --- parse_mailbox --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("user@example.test", "user", "example.test"),
        ("User.Name+tag@Example.TEST", "User.Name+tag", "example.test"),
        ("a@b", "a", "b"),
        ("x@example.test.", "x", "example.test"),  # a trailing root dot is dropped
        ("o'brien@x-y.test", "o'brien", "x-y.test"),
        ("!#$%&'*+/=?^_`{|}~-@x.test", "!#$%&'*+/=?^_`{|}~-", "x.test"),
        ('"john doe"@example.test', '"john doe"', "example.test"),
        ('"a@b"@example.test', '"a@b"', "example.test"),
        (r'"a\"b"@example.test', r'"a\"b"', "example.test"),
        ('""@example.test', '""', "example.test"),
        ("u@[192.0.2.1]", "u", "[192.0.2.1]"),
        ("u@[IPv6:2001:DB8::1]", "u", "[ipv6:2001:db8::1]"),
        ("a" * 64 + "@x.test", "a" * 64, "x.test"),
        ("u@" + "a" * 63 + ".test", "u", "a" * 63 + ".test"),
        ("u@1.2.3.4", "u", "1.2.3.4"),
    ],
)
def test_parse_mailbox_valid(text: str, local: str, domain: str) -> None:
    addr = parse_mailbox(text)
    assert addr == Address(local, domain, False)
    assert str(addr) == f"{local}@{domain}"
    assert addr.quoted == local.startswith('"')
    assert addr.key == f"{local.lower()}@{domain}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user",
        "@example.test",
        "user@",
        "user@@example.test",
        "a@b@example.test",
        "us er@example.test",
        ".user@example.test",
        "user.@example.test",
        "us..er@example.test",
        "user@-example.test",
        "user@example-.test",
        "user@example..test",
        "user@.example.test",
        "user@example.test..",
        "user@exa_mple.test",
        "user@" + "a" * 64 + ".test",  # label over 63
        "a" * 65 + "@x.test",  # local part over 64
        "u@" + ".".join(["a" * 63] * 4) + ".test",  # domain over 255
        "user@[]",
        "user@[a]b",
        '"unterminated@example.test',
        '"a"b"@example.test',
        "user@example.test\n",  # '$' would have matched before the newline
        "user@example.test\r\n",
        "\nuser@example.test",
        "<user@example.test>",
        "user@example.test ",
        " user@example.test",
        "usér@example.test",
        "user@exämple.test",
        "@a.test:",
        "@a.test:user",
    ],
)
def test_parse_mailbox_invalid(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text)


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("@a.test:user@b.test", "user", "b.test"),
        ("@a.test,@c.test:user@B.test", "user", "b.test"),
        ("@relay.test:victim@[192.0.2.9]", "victim", "[192.0.2.9]"),
    ],
)
def test_source_route_flagged(text: str, local: str, domain: str) -> None:
    addr = parse_mailbox(text)
    assert addr == Address(local, domain, True)
    assert addr.source_route
    assert str(addr) == f"{local}@{domain}"  # the route is not part of the mailbox


def test_address_error_is_value_error() -> None:
    assert issubclass(AddressError, ValueError)


# Valid mailboxes built from the grammar: the parser must accept each one and keep its parts.
_atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_atom = st.text(_atext, min_size=1, max_size=8)
_dot_string = st.lists(_atom, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 64)
_label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)


@given(_dot_string, _domain)
def test_parse_mailbox_accepts_grammar(local: str, domain: str) -> None:
    addr = parse_mailbox(f"{local}@{domain}")
    assert addr == Address(local, domain.lower(), False)
    assert parse_mailbox(str(addr)) == addr


@settings(max_examples=1000)
@given(st.one_of(st.text(max_size=40),
                 st.text(string.printable, max_size=40),
                 st.lists(st.sampled_from(["@", ".", ":", ",", '"', "\\", "[", "]", "a", "b-",
                                           "x.test", "\n", " ", "<", ">"]),
                          max_size=15).map("".join)))
def test_parse_mailbox_never_raises_anything_but_address_error(text: str) -> None:
    try:
        addr = parse_mailbox(text)
    except AddressError:
        return
    # Whatever is accepted is a sane mailbox, and reading it again gives the same.
    assert "\n" not in str(addr) and " " not in addr.domain
    assert addr.domain == addr.domain.lower() and not addr.domain.endswith(".")
    assert 0 < len(addr.local) <= 64
    assert parse_mailbox(str(addr)) == Address(addr.local, addr.domain, False)


# --- split_path -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arg", "path", "rest"),
    [
        ("<a@b.test>", "a@b.test", ""),
        ("<>", "", ""),
        ("  <a@b.test>  SIZE=1 BODY=7BIT ", "a@b.test", "SIZE=1 BODY=7BIT"),
        ("<a@b.test>SIZE=1", "a@b.test", "SIZE=1"),
        ("<Postmaster>", "Postmaster", ""),
        ("<@a.test:u@b.test> X", "@a.test:u@b.test", "X"),
        ("<a b> c", "a b", "c"),  # split only; the path is checked by parse_mailbox
    ],
)
def test_split_path(arg: str, path: str, rest: str) -> None:
    assert split_path(arg) == (path, rest)


@pytest.mark.parametrize("arg", ["", " ", "a@b.test", "<a@b.test", "a@b.test>", "x<a@b.test>"])
def test_split_path_invalid(arg: str) -> None:
    with pytest.raises(AddressError):
        split_path(arg)


@given(st.text(max_size=40))
def test_split_path_never_raises_anything_but_address_error(arg: str) -> None:
    try:
        path, rest = split_path(arg)
    except AddressError:
        return
    assert ">" not in path
    assert rest == rest.strip(" ")
