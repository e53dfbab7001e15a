"""Client-side SMTP helpers: reply parsing (RFC 5321 §4.2), EHLO extensions, MAIL/RCPT building
(RFC 1870, RFC 6152) and the DATA payload (RFC 5321 §4.5.2).

Where mailferry has a server-side parser, it is the oracle: what the client encodes, the
server's DataReader and command parser must read back unchanged.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.smtp.client import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    ClientReply,
    ProtocolError,
    ReplyReader,
    encode_data,
    mail_command,
    parse_ehlo,
    peer_max_size,
    rcpt_command,
)
from mailferry.smtp.command import (
    Command,
    MailArgs,
    RcptArgs,
    parse_command,
    parse_mail,
    parse_rcpt,
)
from mailferry.smtp.data import DataReader


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.chunks.append(data)
        return len(data)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def read_all(wire: bytes | list[bytes]) -> list[ClientReply]:
    reader = ReplyReader()
    replies = []
    for chunk in [wire] if isinstance(wire, bytes) else wire:
        reader.feed(chunk)
        while (r := reader.next_reply()) is not None:
            replies.append(r)
    return replies


def one(wire: bytes) -> ClientReply:
    replies = read_all(wire)
    assert len(replies) == 1
    return replies[0]


def render(code: int, texts: list[str]) -> bytes:
    """The wire form of a reply, written the way RFC 5321 §4.2.1 describes it."""
    out = [f"{code}-{t}\r\n" for t in texts[:-1]] + [f"{code} {texts[-1]}\r\n"]
    return "".join(out).encode()


# --- ReplyReader: well-formed replies -------------------------------------------------------------
def test_single_line_reply() -> None:
    r = one(b"250 2.1.0 <a@b.test>... Sender ok\r\n")
    assert r.code == 250
    assert r.lines == ("2.1.0 <a@b.test>... Sender ok",)
    assert r.text == "2.1.0 <a@b.test>... Sender ok"
    assert r.raw_lines == ("250 2.1.0 <a@b.test>... Sender ok",)
    assert r.enhanced == "2.1.0"
    assert (r.is_positive, r.is_temporary, r.is_permanent) == (True, False, False)


def test_multi_line_reply_keeps_every_line() -> None:
    r = one(b"250-mx.example.net Hello\r\n250-SIZE 52428800\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    assert r.code == 250
    assert r.lines == ("mx.example.net Hello", "SIZE 52428800", "PIPELINING", "8BITMIME")
    assert r.text == "mx.example.net Hello SIZE 52428800 PIPELINING 8BITMIME"
    assert r.raw_lines == ("250-mx.example.net Hello", "250-SIZE 52428800", "250-PIPELINING",
                           "250 8BITMIME")


def test_code_alone_ends_a_reply_and_empty_continuations_are_kept() -> None:
    # RFC 5321 §4.2: Reply-code [ SP textstring ] CRLF — the text is optional.
    r = one(b"250-\r\n250-x\r\n250\r\n")
    assert r.lines == ("", "x", "")
    assert r.raw_lines == ("250-", "250-x", "250")
    assert str(one(b"354\r\n")) == "354"


def test_pipelined_replies_in_one_chunk_come_out_in_order() -> None:
    replies = read_all(b"250 2.1.0 ok\r\n550 5.1.1 no\r\n250 2.1.5 ok\r\n354 go on\r\n")
    assert [r.code for r in replies] == [250, 550, 250, 354]
    assert [r.is_permanent for r in replies] == [False, True, False, False]


def test_incomplete_reply_waits_for_more() -> None:
    reader = ReplyReader()
    reader.feed(b"250-first\r\n250 la")
    assert reader.next_reply() is None
    assert reader.pending
    reader.feed(b"st\r\n")
    r = reader.next_reply()
    assert r is not None and r.lines == ("first", "last")
    assert not reader.pending
    assert reader.next_reply() is None


def test_bare_lf_line_ends_are_accepted() -> None:
    r = one(b"250-a\n250 b\n")
    assert r.lines == ("a", "b")


def test_control_characters_in_text_are_escaped_not_kept() -> None:
    # A CR inside a line must never reach the transaction log or a bounce as a real CR.
    r = one(b"550 5.1.1 user\runknown\x00 tab\tok\x1b\r\n")
    assert r.lines == ("5.1.1 user\\runknown\\x00 tab\tok\\x1b",)
    assert "\r" not in r.raw_lines[0] and "\x00" not in r.raw_lines[0]


def test_utf8_text_is_decoded_and_invalid_octets_stay_visible() -> None:
    assert one("250 d\u00e9j\u00e0 vu\r\n".encode()).text == "d\u00e9j\u00e0 vu"
    assert one(b"250 bad \xff octet\r\n").text == "bad \\xff octet"


_reply_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
_reply = st.tuples(
    st.integers(200, 559).filter(lambda c: c % 100 < 60),
    st.lists(_reply_text, min_size=1, max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_reply, min_size=1, max_size=5), st.data())
def test_any_replies_any_chunking(replies: list[tuple[int, list[str]]],
                                  data: st.DataObject) -> None:
    wire = b"".join(render(code, texts) for code, texts in replies)
    cuts = data.draw(st.one_of(st.just(list(range(1, len(wire)))),
                               st.lists(st.integers(0, len(wire)), max_size=30)))
    got = read_all(split_at(wire, cuts))
    assert [(r.code, list(r.lines)) for r in got] == [(c, t) for c, t in replies]
    assert b"".join(render(r.code, list(r.lines)) for r in got) == wire


# --- ReplyReader: protocol errors -----------------------------------------------------------------
@pytest.mark.parametrize("wire", [
    b"OK\r\n",            # no code
    b"25 OK\r\n",         # two digits
    b"2500 OK\r\n",       # four digits
    b"250OK\r\n",         # no separator
    b"250_OK\r\n",        # wrong separator
    b"150 preliminary\r\n",  # RFC 5321 Reply-code starts with 2-5
    b"650 nonsense\r\n",
    b"260 second digit over 5\r\n",
    b"\r\n",              # empty line
    b" 250 leading space\r\n",
    b"25a x\r\n",
])
def test_malformed_line_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        read_all(wire)


def test_changing_code_inside_a_reply_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="250 to 251"):
        read_all(b"250-first\r\n251 second\r\n")


def test_protocol_error_is_sticky() -> None:
    reader = ReplyReader()
    reader.feed(b"garbage\r\n")
    with pytest.raises(ProtocolError):
        reader.next_reply()
    reader.feed(b"250 fine now?\r\n")
    with pytest.raises(ProtocolError):
        reader.next_reply()


def test_line_of_exactly_the_limit_is_fine() -> None:
    line = b"250 " + b"x" * (MAX_REPLY_LINE - 4)
    assert len(one(line + b"\r\n").text) == MAX_REPLY_LINE - 4


def test_line_over_the_limit_is_a_protocol_error() -> None:
    line = b"250 " + b"x" * (MAX_REPLY_LINE - 3)
    with pytest.raises(ProtocolError, match="longer than"):
        read_all(line + b"\r\n")


def test_endless_line_fails_before_its_end_arrives() -> None:
    """Memory stays bounded: no need to wait for the LF of a hostile endless line."""
    reader = ReplyReader()
    reader.feed(b"250 " + b"x" * (MAX_REPLY_LINE - 4) + b"\r")  # complete but for its LF
    assert reader.next_reply() is None
    reader.feed(b"y")
    with pytest.raises(ProtocolError, match="longer than"):
        reader.next_reply()


def test_reply_of_the_maximum_line_count_is_fine() -> None:
    texts = [str(i) for i in range(MAX_REPLY_LINES)]
    assert one(render(250, texts)).lines == tuple(texts)


def test_reply_over_the_maximum_line_count_is_a_protocol_error() -> None:
    reader = ReplyReader()
    reader.feed(b"250-x\r\n" * MAX_REPLY_LINES)
    assert reader.next_reply() is None
    reader.feed(b"250-x\r\n")  # fails on this line, without waiting for an end that never comes
    with pytest.raises(ProtocolError, match="lines"):
        reader.next_reply()


# --- ClientReply ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("code", "first", "enhanced"), [
    (550, "5.1.1 User unknown", "5.1.1"),
    (451, "4.7.1 Greylisted", "4.7.1"),
    (250, "2.0.0", "2.0.0"),
    (552, "5.3.4 Too big", "5.3.4"),
    (550, "5.123.456 wide", "5.123.456"),
    (550, "User unknown", None),
    (250, "5.0.0 class disagrees with the reply code", None),
    (550, "5.1.1x not a code", None),
    (550, "5.1 short", None),
    (550, "5.1.1000 detail too long", None),
    (550, " 5.1.1 leading space", None),
])
def test_enhanced_status_code(code: int, first: str, enhanced: str | None) -> None:
    assert ClientReply(code, (first, "second line")).enhanced == enhanced


def test_reply_classes() -> None:
    assert [ClientReply(c, ("x",)).is_positive for c in (250, 354, 421, 550)] == \
        [True, True, False, False]
    assert [ClientReply(c, ("x",)).is_temporary for c in (250, 354, 421, 450, 550)] == \
        [False, False, True, True, False]
    assert [ClientReply(c, ("x",)).is_permanent for c in (250, 452, 500, 554)] == \
        [False, False, True, True]


def test_hand_built_reply_renders_raw_lines_and_compares_by_content() -> None:
    r = ClientReply(550, ("5.1.1 a", "5.1.1 b"))
    assert r.raw_lines == ("550-5.1.1 a", "550 5.1.1 b")
    assert str(r) == "550 5.1.1 a 5.1.1 b"
    assert r == one(b"550-5.1.1 a\n550 5.1.1 b\n")


# --- EHLO -----------------------------------------------------------------------------------------
def test_parse_ehlo() -> None:
    r = one(b"250-mx.example.net Hello client [192.0.2.1]\r\n250-SIZE 52428800\r\n"
            b"250-PIPELINING\r\n250-starttls\r\n250-AUTH PLAIN  LOGIN\r\n250-AUTH=LOGIN\r\n"
            b"250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n")
    assert parse_ehlo(r) == {
        "SIZE": "52428800", "PIPELINING": "", "STARTTLS": "", "AUTH": "PLAIN  LOGIN",
        "ENHANCEDSTATUSCODES": "", "8BITMIME": "",
    }


def test_parse_ehlo_greeting_only_and_greeting_is_not_an_extension() -> None:
    assert parse_ehlo(one(b"250 mx.example.net SIZE\r\n")) == {}


def test_parse_ehlo_first_of_a_repeated_keyword_wins() -> None:
    assert parse_ehlo(one(b"250-hi\r\n250-SIZE 10\r\n250 size 20\r\n")) == {"SIZE": "10"}


def test_parse_ehlo_refuses_a_failure_reply() -> None:
    with pytest.raises(ValueError):
        parse_ehlo(one(b"502 5.5.1 EHLO not implemented\r\n"))


@pytest.mark.parametrize(("ext", "limit"), [
    ({"SIZE": "52428800"}, 52428800), ({"SIZE": ""}, None), ({"SIZE": "0"}, None),
    ({"SIZE": "12x"}, None), ({}, None), ({"SIZE": "\u0661\u0662"}, None),
])
def test_peer_max_size(ext: dict[str, str], limit: int | None) -> None:
    assert peer_max_size(ext) == limit


# --- MAIL / RCPT ----------------------------------------------------------------------------------
FULL = {"SIZE": "1000000", "8BITMIME": "", "PIPELINING": ""}


@pytest.mark.parametrize(("sender", "size", "body8bit", "ext", "expected"), [
    ("a@b.test", 1234, True, FULL, "MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME"),
    ("a@b.test", 1234, False, FULL, "MAIL FROM:<a@b.test> SIZE=1234"),
    ("a@b.test", None, True, FULL, "MAIL FROM:<a@b.test> BODY=8BITMIME"),
    ("a@b.test", 1234, True, {}, "MAIL FROM:<a@b.test>"),
    ("a@b.test", 1234, True, {"SIZE": ""}, "MAIL FROM:<a@b.test> SIZE=1234"),
    ("a@b.test", 1234, True, {"8BITMIME": ""}, "MAIL FROM:<a@b.test> BODY=8BITMIME"),
    ("", 0, False, FULL, "MAIL FROM:<> SIZE=0"),
])
def test_mail_command(sender: str, size: int | None, body8bit: bool, ext: dict[str, str],
                      expected: str) -> None:
    assert mail_command(sender, size, body8bit, ext) == expected


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["", "a@b.test", "first.last+tag@mail.example.org", '"x y"@b.test']),
       st.one_of(st.none(), st.integers(0, 10**9)), st.booleans(),
       st.sets(st.sampled_from(["SIZE", "8BITMIME", "PIPELINING"])))
def test_mail_command_is_read_back_by_our_server(sender: str, size: int | None, body8bit: bool,
                                                 ext: set[str]) -> None:
    cmd = parse_command(mail_command(sender, size, body8bit, dict.fromkeys(ext, "")))
    assert isinstance(cmd, Command) and cmd.verb == "MAIL"
    args = parse_mail(cmd.arg, max_size=10**9)
    assert isinstance(args, MailArgs)
    assert args.path == sender
    assert args.size == (size if "SIZE" in ext else None)
    assert args.body == ("8BITMIME" if body8bit and "8BITMIME" in ext else None)


def test_rcpt_command_is_read_back_by_our_server() -> None:
    line = rcpt_command("bob@example.net")
    assert line == "RCPT TO:<bob@example.net>"
    cmd = parse_command(line)
    assert isinstance(cmd, Command) and cmd.verb == "RCPT"
    args = parse_rcpt(cmd.arg)
    assert isinstance(args, RcptArgs) and args.path == "bob@example.net"


@pytest.mark.parametrize("bad", [
    "a@b.test>\r\nRCPT TO:<victim@x.test", "a@b.test\n", "a@b.test\r", "a\x00@b.test",
    "a\t@b.test", "a\x7f@b.test", "j\u00f6rg@b.test",
])
def test_commands_refuse_injection_and_non_ascii(bad: str) -> None:
    with pytest.raises(ValueError):
        mail_command(bad, 10, False, FULL)
    with pytest.raises(ValueError):
        rcpt_command(bad)


def test_rcpt_command_refuses_the_null_path_and_mail_a_negative_size() -> None:
    with pytest.raises(ValueError):
        rcpt_command("")
    with pytest.raises(ValueError):
        mail_command("a@b.test", -1, False, FULL)


# --- DATA -----------------------------------------------------------------------------------------
def server_reads(payload: bytes) -> bytes:
    """What mailferry's own server makes of ``payload`` sent after 354."""
    sink = Sink()
    reader = DataReader(sink, 10**9, accept_long_lines=True)
    assert reader.feed(payload) == b""  # the end marker is the very last thing sent
    assert reader.done
    assert reader.error is None
    return b"".join(sink.chunks)


_plain = st.binary(max_size=50).map(lambda b: b.translate(None, b"\r\n"))
_dotted = st.builds(lambda n, b: b"." * n + b, st.integers(1, 3), _plain)
_line = st.one_of(_plain, _dotted, st.sampled_from([b"", b".", b"..", b". "]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=15))
def test_encode_data_round_trip_through_our_server(lines: list[bytes]) -> None:
    message = b"".join(ln + b"\r\n" for ln in lines)  # the usual case: CRLF already
    assert server_reads(encode_data(message)) == message


_NEWLINE = re.compile(rb"\r\n|\r|\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=8), st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"\n\r", b".", b"\r\n.", b"\n.", b"\r.", b"\r\n.\r\n"])), max_size=20))
def test_encode_data_any_octets_normalised_then_round_trip(parts: list[bytes]) -> None:
    message = b"".join(parts)
    # Oracle: a regex tokeniser (leftmost alternative first: CRLF before CR) — each CRLF, CR or
    # LF is one line end.
    expected = _NEWLINE.sub(b"\r\n", message)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    payload = encode_data(message)
    assert server_reads(payload) == expected
    body = payload[:-3]
    assert payload.endswith(b".\r\n") and (body == b"" or body.endswith(b"\r\n"))
    assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")  # no bare CR or LF
    assert b"\r\n.\r\n" not in b"\r\n" + body  # nothing ends the data early


@pytest.mark.parametrize(("message", "payload"), [
    (b"", b".\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.\r\n..b\r\n", b"a\r\n..\r\n...b\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),  # lone CR, then CRLF: two line ends
    (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),  # lone LF, then lone CR: two line ends
    (b"a\n.b", b"a\r\n..b\r\n.\r\n"),  # stuffing sees lines made by normalisation
    (b"x\r.", b"x\r\n..\r\n.\r\n"),
])
def test_encode_data_examples(message: bytes, payload: bytes) -> None:
    assert encode_data(message) == payload


def test_encode_data_ten_mebibytes_is_fast() -> None:
    """Used for every delivered message: whole-buffer operations, no Python loop per line. The
    bound is generous on purpose (measured: a few tens of milliseconds)."""
    chunk = b"x" * 70 + b"\r\n" + b".dotted line\n" + b"bare cr\r"
    message = chunk * (10 * 1024 * 1024 // len(chunk))
    start = time.perf_counter()
    payload = encode_data(message)
    elapsed = time.perf_counter() - start
    assert payload.count(b"\r\n..dotted line\r\n") == len(message) // len(chunk)
    assert elapsed < 1.0, f"10 MiB took {elapsed:.2f} s"
