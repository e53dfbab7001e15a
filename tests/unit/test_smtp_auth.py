"""smtp.auth (SASL PLAIN and LOGIN, RFC 4954 / RFC 4616) and the AUTH / STARTTLS states of
smtp.server: sans-I/O, bytes in, events out. Hypothesis for the parsers."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.reply import Reply
from mailferry.smtp.auth import (
    Challenge,
    Credentials,
    Exchange,
    decode,
    parse_auth_args,
    parse_plain,
)
from mailferry.smtp.server import (
    Answered,
    AuthRequest,
    MailRequest,
    ServerProtocol,
    StartTlsRequest,
)
from tests.unit.test_smtp_server import HOST, IP, answered, events, one


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- parsers --------------------------------------------------------------------------------------
names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                min_size=1, max_size=40)


@given(user=names, password=names, authzid=st.sampled_from(["", "same", "other"]))
def test_plain_round_trip(user: str, password: str, authzid: str) -> None:
    zid = {"": "", "same": user, "other": user + "x"}[authzid]
    got = parse_plain(f"{zid}\x00{user}\x00{password}".encode())
    assert isinstance(got, Credentials)
    assert (got.username, got.password, got.mechanism) == (user, password, "PLAIN")
    # Someone else's authorization identity is never honoured (no proxy login).
    assert got.acceptable is (authzid != "other" or zid.lower() == user.lower())
    assert repr(got) == f"Credentials('PLAIN', {user!r}, password=***)"


def test_plain_authzid_case_does_not_matter() -> None:
    got = parse_plain(b"Alice@Example.TEST\x00alice@example.test\x00pw")
    assert isinstance(got, Credentials) and got.acceptable


@given(st.binary(max_size=80))
def test_plain_never_crashes_and_needs_exactly_two_nuls(data: bytes) -> None:
    got = parse_plain(data)
    assert isinstance(got, Credentials | Reply)
    if data.count(b"\x00") != 2:
        assert isinstance(got, Reply) and (got.code, got.enhanced) == (501, "5.5.2")


@given(st.binary(max_size=200))
def test_base64_round_trip(data: bytes) -> None:
    assert decode(b64(data)) == (data if data else b"")


@given(st.text(max_size=60))
def test_decode_is_base64_or_501_552(text: str) -> None:
    got = decode(text)
    if isinstance(got, Reply):
        assert (got.code, got.enhanced) == (501, "5.5.2")
    else:
        assert text == "=" or base64.b64encode(got).decode() == text


@pytest.mark.parametrize("text", ["not base64!", "AAA", "QUFB\x00", "QU FB", "é"])
def test_bad_base64(text: str) -> None:
    got = decode(text)
    assert isinstance(got, Reply) and (got.code, got.enhanced) == (501, "5.5.2")


def test_equals_is_an_empty_initial_response() -> None:
    assert decode("=") == b""
    got = Exchange("PLAIN", "=").start()
    assert isinstance(got, Reply) and got.code == 501  # empty PLAIN data is malformed


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_star_cancels(mechanism: str) -> None:
    ex = Exchange(mechanism, None)
    assert isinstance(ex.start(), Challenge)
    got = ex.step("*")
    assert isinstance(got, Reply) and (got.code, got.enhanced) == (501, "5.0.0")


def test_login_prompts_then_credentials() -> None:
    ex = Exchange("LOGIN", None)
    first = ex.start()
    assert first == Challenge("VXNlcm5hbWU6")  # "Username:"
    second = ex.step(b64(b"alice@example.test"))
    assert second == Challenge("UGFzc3dvcmQ6")  # "Password:"
    got = ex.step(b64(b"s3cret"))
    assert got == Credentials("LOGIN", "alice@example.test", "s3cret")


def test_login_initial_response_is_the_username() -> None:
    ex = Exchange("LOGIN", b64(b"alice@example.test"))
    assert ex.start() == Challenge("UGFzc3dvcmQ6")


@given(user=names, password=names)
def test_login_any_names(user: str, password: str) -> None:
    ex = Exchange("LOGIN", None)
    ex.start()
    ex.step(b64(user.encode()))
    assert ex.step(b64(password.encode())) == Credentials("LOGIN", user, password)


@pytest.mark.parametrize(("arg", "expected"), [
    ("PLAIN", ("PLAIN", None)), ("plain AGEAYg==", ("PLAIN", "AGEAYg==")),
    ("LOGIN =", ("LOGIN", "=")), ("CRAM-MD5", (504, "5.5.4")), ("", (501, "5.5.4")),
    ("PLAIN a b", (501, "5.5.4")), ("PLAIN ", (501, "5.5.4")),
])
def test_auth_arguments(arg: str, expected: tuple) -> None:
    got = parse_auth_args(arg)
    assert (got if not isinstance(got, Reply) else (got.code, got.enhanced)) == expected


@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_auth_arguments_never_crash(arg: str) -> None:
    assert isinstance(parse_auth_args(arg), tuple | Reply)


# --- the server's states --------------------------------------------------------------------------
def submission(*, tls: bool = False) -> ServerProtocol:
    proto = ServerProtocol(HOST, IP, starttls_available=True, auth_enabled=True,
                           auth_required=True)
    if tls:
        proto.tls_started()
    return proto


def ehlo_lines(proto: ServerProtocol) -> list[str]:
    ev = one(proto, b"EHLO client.test\r\n")
    assert isinstance(ev, Answered)
    return list(ev.reply.lines)


def test_starttls_offered_in_the_clear_auth_only_after() -> None:
    proto = submission()
    lines = ehlo_lines(proto)
    assert lines[-1] == "250 STARTTLS"
    assert not any("AUTH" in ln for ln in lines)
    proto.tls_started()
    lines = ehlo_lines(proto)
    assert not any("STARTTLS" in ln for ln in lines)
    assert lines[-1] == "250 AUTH PLAIN LOGIN"


def test_auth_in_the_clear_is_538_and_secret_not_echoed() -> None:
    proto = submission()
    ehlo_lines(proto)
    ev = one(proto, b"AUTH PLAIN " + b64(b"\x00alice@example.test\x00pw").encode() + b"\r\n")
    answered(ev, 538, "5.7.11")
    assert isinstance(ev, Answered) and ev.line == "AUTH PLAIN"


def test_mail_before_tls_and_before_auth_is_530() -> None:
    proto = submission()
    ehlo_lines(proto)
    answered(one(proto, b"MAIL FROM:<alice@example.test>\r\n"), 530, "5.7.0")
    proto.tls_started()
    ehlo_lines(proto)
    ev = one(proto, b"MAIL FROM:<alice@example.test>\r\n")
    answered(ev, 530, "5.7.0")
    assert "Authentication required" in ev.reply.lines[0]  # type: ignore[union-attr]
    proto.auth_succeeded("alice@example.test")
    assert isinstance(one(proto, b"MAIL FROM:<alice@example.test>\r\n"), MailRequest)


def test_starttls_discards_what_was_pipelined_with_it() -> None:
    proto = submission()
    ehlo_lines(proto)
    evs = events(proto, b"STARTTLS\r\nMAIL FROM:<evil@example.test>\r\nRCPT TO:<x@y.test>\r\n")
    assert isinstance(evs[0], StartTlsRequest)
    # The session stops reading events at the request; tls_started forgets the rest.
    proto.tls_started()
    assert events(proto) == [] and not proto.pending_input
    assert proto.helo_name is None and proto.mail is None
    answered(one(proto, b"MAIL FROM:<a@b.test>\r\n"), 503, "5.5.1")  # EHLO again first


def test_starttls_twice_and_with_arguments() -> None:
    proto = submission(tls=True)
    answered(one(proto, b"STARTTLS\r\n"), 503, "5.5.1")
    answered(one(submission(), b"STARTTLS now\r\n"), 501, "5.5.4")


def test_plain_with_initial_response() -> None:
    proto = submission(tls=True)
    ehlo_lines(proto)
    ev = one(proto, b"AUTH PLAIN " + b64(b"\x00alice@example.test\x00pw").encode() + b"\r\n")
    assert isinstance(ev, AuthRequest) and ev.line == "AUTH PLAIN"
    assert ev.credentials == Credentials("PLAIN", "alice@example.test", "pw")


def test_login_continuation_lines_are_hidden() -> None:
    proto = submission(tls=True)
    ehlo_lines(proto)
    ev = one(proto, b"AUTH LOGIN\r\n")
    answered(ev, 334, "")
    assert isinstance(ev, Answered) and ev.line == "AUTH LOGIN" and not ev.hidden
    ev = one(proto, b64(b"alice@example.test").encode() + b"\r\n")
    assert isinstance(ev, Answered) and ev.hidden and ev.line is None
    ev = one(proto, b64(b"pw").encode() + b"\r\n")
    assert isinstance(ev, AuthRequest) and ev.line is None


def test_a_sasl_line_is_never_run_as_a_command() -> None:
    proto = submission(tls=True)
    ehlo_lines(proto)
    one(proto, b"AUTH PLAIN\r\n")
    ev = one(proto, b"QUIT\r\n")  # not base64: a SASL response that fails, not a QUIT
    answered(ev, 501, "5.5.2")
    assert isinstance(ev, Answered) and ev.hidden and not ev.close
    # Non-ASCII in a SASL line (a typed password) is hidden too.
    one(proto, b"AUTH PLAIN\r\n")
    ev = one(proto, "pässword".encode() + b"\r\n")
    assert isinstance(ev, Answered) and ev.hidden and ev.line is None


def test_auth_rules() -> None:
    proto = submission(tls=True)
    answered(one(proto, b"AUTH PLAIN\r\n"), 503, "5.5.1")  # EHLO first
    ehlo_lines(proto)
    answered(one(proto, b"AUTH CRAM-MD5\r\n"), 504, "5.5.4")
    answered(one(proto, b"AUTH PLAIN\r\n"), 334, "")
    answered(one(proto, b"*\r\n"), 501, "5.0.0")
    proto.auth_succeeded("alice@example.test")
    answered(one(proto, b"AUTH PLAIN\r\n"), 503, "5.5.1")  # already authenticated


@given(st.binary(max_size=300))
def test_any_bytes_in_a_sasl_exchange_end_it_or_continue_it(data: bytes) -> None:
    proto = submission(tls=True)
    ehlo_lines(proto)
    one(proto, b"AUTH LOGIN\r\n")
    for ev in events(proto, data.replace(b"\r\n", b"") + b"\r\n"):
        # Whatever came, nothing of it is shown as a command line.
        assert isinstance(ev, Answered | AuthRequest)
        if isinstance(ev, Answered) and ev.reply.code != 500:
            assert ev.hidden and ev.line is None
