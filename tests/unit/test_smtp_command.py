"""Command-line parsing (RFC 5321 §4.1.1, §4.1.2; RFC 1870 SIZE; RFC 6152 BODY), sans-I/O."""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.address import Address
from mailferry.reply import Reply
from mailferry.smtp.command import (
    Command,
    MailArgs,
    RcptArgs,
    check_line_chars,
    parse_command,
    parse_helo,
    parse_mail,
    parse_params,
    parse_rcpt,
)

MAX = 10_000_000


def assert_reply(result: object, code: int, enhanced: str) -> None:
    assert isinstance(result, Reply), result
    assert (result.code, result.enhanced) == (code, enhanced)


def mail(arg: str, max_size: int = MAX) -> MailArgs:
    result = parse_mail(arg, max_size=max_size)
    assert isinstance(result, MailArgs), result
    return result


def rcpt(arg: str) -> RcptArgs:
    result = parse_rcpt(arg)
    assert isinstance(result, RcptArgs), result
    return result


# --- parse_command --------------------------------------------------------------------------------
@pytest.mark.parametrize("line", ["FOO", "", " ", "STARTTLSX", "AUTHPLAIN x", "MAILFROM:<a@b.test>",
                                  "EHLOx", "\tNOOP", "TURN"])
def test_unknown_command_is_500(line: str) -> None:
    assert_reply(parse_command(line), 500, "5.5.2")


@pytest.mark.parametrize("verb", ["EHLO", "HELO", "MAIL", "RCPT", "NOOP", "VRFY", "HELP", "EXPN",
                                  "AUTH"])
@pytest.mark.parametrize("spell", [str.upper, str.lower, str.title])
def test_verbs_are_case_insensitive(verb: str, spell: Callable[[str], str]) -> None:
    result = parse_command(f"{spell(verb)} Some Arg")
    assert result == Command(verb, "Some Arg")


@pytest.mark.parametrize("verb", ["DATA", "RSET", "QUIT"])
def test_no_arg_verbs(verb: str) -> None:
    assert parse_command(verb) == Command(verb, "")
    assert parse_command(verb.lower()) == Command(verb, "")
    assert isinstance(parse_command(verb + "   "), Command)  # trailing spaces are tolerated
    assert_reply(parse_command(f"{verb} now"), 501, "5.5.4")


def test_argument_kept_as_sent() -> None:
    line = "MAIL FROM:<A@B.test>  SIZE=1"
    assert parse_command(line) == Command("MAIL", "FROM:<A@B.test>  SIZE=1")
    assert parse_command("NOOP") == Command("NOOP", "")


# --- check_line_chars -----------------------------------------------------------------------------
def test_check_line_chars() -> None:
    assert check_line_chars(b"MAIL FROM:<a@b.test>") is None
    assert check_line_chars(b"") is None
    assert check_line_chars(b"NOOP ~\x7f\x01") is None  # ASCII controls other than NUL pass here
    assert_reply(check_line_chars(b"NO\x00OP"), 500, "5.5.2")
    assert_reply(check_line_chars(b"EHLO h\xc3\xa9llo.test"), 500, "5.5.2")
    assert_reply(check_line_chars(b"\x80"), 500, "5.5.2")


# --- parse_params ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("SIZE=100", {"SIZE": "100"}),
        ("size=100 body=8bitmime", {"SIZE": "100", "BODY": "8bitmime"}),  # keys upper, values not
        ("SMTPUTF8", {"SMTPUTF8": None}),
        ("A=1  B", {"A": "1", "B": None}),
        ("X-FOO=a=b", {"X-FOO": "a=b"}),
        ("RET=HDRS ENVID=QQ314159", {"RET": "HDRS", "ENVID": "QQ314159"}),
    ],
)
def test_parse_params(text: str, expected: dict[str, str | None]) -> None:
    assert parse_params(text) == expected


@pytest.mark.parametrize("text", ["SIZE=", "=1", "=", "A_B=1", "A.B", "SIZE=1 =2", "K!=v"])
def test_parse_params_malformed(text: str) -> None:
    assert parse_params(text) is None


# --- parse_mail -----------------------------------------------------------------------------------
def test_mail_plain() -> None:
    args = mail("FROM:<alice@example.test>")
    assert args == MailArgs("alice@example.test", Address("alice", "example.test"), None, None)


@pytest.mark.parametrize("prefix", ["FROM:", "from:", "From:", "fRoM:"])
def test_mail_from_is_case_insensitive(prefix: str) -> None:
    args = mail(f"{prefix}<Alice@Example.TEST>")
    assert args.path == "Alice@Example.TEST"
    assert args.address == Address("Alice", "example.test")  # local part keeps its case


def test_null_sender() -> None:
    args = mail("FROM:<>")
    assert (args.path, args.address, args.size, args.body) == ("", None, None, None)
    args = mail("FROM:<> SIZE=1234 BODY=8BITMIME")
    assert (args.path, args.address, args.size, args.body) == ("", None, 1234, "8BITMIME")


def test_size_and_body() -> None:
    args = mail("FROM:<a@b.test> SIZE=42 BODY=7bit")
    assert (args.size, args.body) == (42, "7BIT")
    assert mail("FROM:<a@b.test> body=8bitmime size=0").body == "8BITMIME"
    assert mail("FROM:<a@b.test> SIZE=00042").size == 42


def test_size_limit() -> None:
    assert mail("FROM:<a@b.test> SIZE=1000", max_size=1000).size == 1000
    assert_reply(parse_mail("FROM:<a@b.test> SIZE=1001", max_size=1000), 552, "5.3.4")
    assert_reply(parse_mail("FROM:<> SIZE=99999999999999999999", max_size=1000), 552, "5.3.4")
    # max_size 0 means no limit
    assert mail("FROM:<a@b.test> SIZE=99999999999999999999", max_size=0).size == 10**20 - 1


@pytest.mark.parametrize("value", ["SIZE", "SIZE=abc", "SIZE=-1", "SIZE=+1", "SIZE=1.5",
                                   "SIZE=0x10", "SIZE=123456789012345678901", "SIZE=²", "SIZE=١٢"])
def test_bad_size_is_501(value: str) -> None:
    assert_reply(parse_mail(f"FROM:<a@b.test> {value}", max_size=MAX), 501, "5.5.4")
    assert_reply(parse_mail(f"FROM:<> {value}", max_size=0), 501, "5.5.4")


@pytest.mark.parametrize("value", ["BODY", "BODY=BINARYMIME", "BODY=8BIT", "BODY=7BITx"])
def test_bad_body_is_501(value: str) -> None:
    result = parse_mail(f"FROM:<a@b.test> {value}", max_size=MAX)
    assert_reply(result, 501, "5.5.4")
    assert isinstance(result, Reply) and "BODY" in str(result.text)


@pytest.mark.parametrize("params", ["AUTH=<>", "SMTPUTF8", "RET=HDRS", "ENVID=x", "SIZE=1 X-Y"])
def test_unknown_mail_param_is_555(params: str) -> None:
    assert_reply(parse_mail(f"FROM:<a@b.test> {params}", max_size=MAX), 555, "5.5.4")


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "FROM:",
        "FROM",
        "FROM a@b.test",
        "FROM:a@b.test",  # no angle brackets
        "FROM:<a@b.test",  # unbalanced
        "TO:<a@b.test>",
        "FROM:<a@b.test> SIZE=",  # malformed parameter
        "FROM:<a@b.test> =x",
        "FROM:<a@b.test> K_Y=1",
    ],
)
def test_mail_syntax_is_501(arg: str) -> None:
    result = parse_mail(arg, max_size=MAX)
    assert_reply(result, 501, "5.5.4")
    assert isinstance(result, Reply) and "MAIL FROM" in str(result.text)


@pytest.mark.parametrize("path", ["a", "a@", "@b.test", "a b@c.test", "a..b@c.test", "a@b..test",
                                  "a@-b.test", "a@b.test@c.test", "Postmaster"])
def test_bad_sender_address_is_501_517(path: str) -> None:
    assert_reply(parse_mail(f"FROM:<{path}>", max_size=MAX), 501, "5.1.7")


def test_quoted_local_part() -> None:
    args = mail('FROM:<"john doe"@example.test> SIZE=10')
    assert args.address == Address('"john doe"', "example.test")
    assert args.address.quoted
    assert args.size == 10
    args = mail(r'FROM:<"a\"b@c"@example.test>')
    assert args.address is not None and args.address.local == r'"a\"b@c"'


@pytest.mark.parametrize(
    "path", ["@a.test:user@b.test", "@a.test,@c.test:user@b.test", "@A.TEST:user@B.test"]
)
def test_source_route_is_flagged(path: str) -> None:
    for args in (mail(f"FROM:<{path}>"), rcpt(f"TO:<{path}>")):
        assert args.path == path
        assert args.address == Address("user", "b.test", source_route=True)


def test_no_source_route_by_default() -> None:
    args = mail("FROM:<user@b.test>")
    assert args.address is not None and not args.address.source_route


# --- parse_rcpt -----------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["TO:", "to:", "To:"])
def test_rcpt(prefix: str) -> None:
    assert rcpt(f"{prefix}<Bob@Example.test>") == RcptArgs(
        "Bob@Example.test", Address("Bob", "example.test"))


@pytest.mark.parametrize("path", ["Postmaster", "postmaster", "POSTMASTER", "PostMaster"])
def test_bare_postmaster_is_accepted(path: str) -> None:
    args = rcpt(f"TO:<{path}>")
    assert args.path == path
    assert args.address == Address("postmaster", "")


def test_postmaster_with_domain_is_an_ordinary_address() -> None:
    assert rcpt("TO:<Postmaster@Example.test>").address == Address("Postmaster", "example.test")


@pytest.mark.parametrize("params", ["NOTIFY=NEVER", "ORCPT=rfc822;a@b.test", "SIZE=1", "X"])
def test_any_rcpt_param_is_555(params: str) -> None:
    assert_reply(parse_rcpt(f"TO:<c@d.test> {params}"), 555, "5.5.4")
    assert_reply(parse_rcpt(f"TO:<postmaster> {params}"), 555, "5.5.4")


@pytest.mark.parametrize(
    "arg", ["", "TO", "TO:", "TO:c@d.test", "TO:<c@d.test", "FROM:<c@d.test>", "TO:<c@d.test> ="]
)
def test_rcpt_syntax_is_501(arg: str) -> None:
    result = parse_rcpt(arg)
    assert_reply(result, 501, "5.5.4")
    assert isinstance(result, Reply) and "RCPT TO" in str(result.text)


@pytest.mark.parametrize("path", ["", "c", "c@", "@d.test", "c@d.test.."])
def test_bad_recipient_address_is_501_513(path: str) -> None:
    assert_reply(parse_rcpt(f"TO:<{path}>"), 501, "5.1.3")


# --- parse_helo -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arg", "name"),
    [("client.test", "client.test"), ("  client.test  ", "client.test"),
     ("[192.0.2.1]", "[192.0.2.1]"), ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
     ("localhost", "localhost")],
)
def test_helo_name(arg: str, name: str) -> None:
    assert parse_helo(arg) == name


@pytest.mark.parametrize("arg", ["", " ", "   ", "two words", "a b c"])
def test_helo_syntax_is_501(arg: str) -> None:
    assert_reply(parse_helo(arg), 501, "5.5.4")


# --- robustness -----------------------------------------------------------------------------------
# Printable text, biased towards the shapes the parsers look for.
_atoms = st.sampled_from(["FROM:", "TO:", "<", ">", "<>", "@", ":", ",", ".", "=", " ", '"', "\\",
                          "SIZE", "BODY", "SIZE=", "BODY=", "8BITMIME", "7BIT", "postmaster",
                          "a", "b.test", "[", "]", "-", "0", "99999999999999999999999"])
smtpish = st.lists(st.one_of(_atoms, st.text(string.printable, max_size=5)), max_size=12).map(
    "".join)
anything = st.one_of(smtpish, st.text(max_size=40))


@settings(max_examples=500)
@given(anything)
def test_parse_command_never_raises(line: str) -> None:
    result = parse_command(line)
    assert isinstance(result, Command | Reply)
    if isinstance(result, Command):
        assert result.verb == line.partition(" ")[0].upper()


@settings(max_examples=500)
@given(anything, st.integers(0, 10**12))
def test_parse_mail_never_raises(arg: str, max_size: int) -> None:
    for text in (arg, "FROM:" + arg, "FROM:<a@b.test> " + arg):
        result = parse_mail(text, max_size=max_size)
        assert isinstance(result, MailArgs | Reply)
        if isinstance(result, Reply):
            assert result.code in (501, 552, 555)
        else:
            assert (result.address is None) == (result.path == "")
            if max_size and result.size is not None:
                assert result.size <= max_size


@settings(max_examples=500)
@given(anything)
def test_parse_rcpt_never_raises(arg: str) -> None:
    for text in (arg, "TO:" + arg, "TO:<" + arg + ">"):
        result = parse_rcpt(text)
        assert isinstance(result, RcptArgs | Reply)
        if isinstance(result, Reply):
            assert result.code in (501, 555)


@given(anything)
def test_parse_params_and_helo_never_raise(text: str) -> None:
    params = parse_params(text)
    assert params is None or all(k == k.upper() for k in params)
    name = parse_helo(text)
    assert isinstance(name, str | Reply)
    if isinstance(name, str):
        assert name and " " not in name


@given(st.binary(max_size=40))
def test_check_line_chars_never_raises(line: bytes) -> None:
    result = check_line_chars(line)
    assert (result is None) == (line.isascii() and 0 not in line)
