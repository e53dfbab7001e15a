"""ServerProtocol: the SMTP server state machine driven with bytes, no sockets (RFC 5321, 2920)."""

from __future__ import annotations

from typing import Any

import pytest

from mailferry.address import Address
from mailferry.reply import Reply
from mailferry.smtp.server import (
    Answered,
    DataRequest,
    Event,
    Limits,
    MailRequest,
    MessageEnd,
    RcptRequest,
    ServerProtocol,
)

HOST = "mx.example.test"
IP = "192.0.2.7"


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes, /) -> None:
        self.data += data


def check_reply(rep: Reply, code: int, enhanced: str) -> list[str]:
    """Check code and enhanced code, and the wire form (RFC 5321 §4.2.1): every line CRLF-ended,
    ``code-`` on all lines but the last, ``code `` on the last. Returns the texts of the lines."""
    assert (rep.code, rep.enhanced) == (code, enhanced)
    wire = rep.encode()
    assert wire.endswith(b"\r\n")
    lines = wire[:-2].split(b"\r\n")
    assert all(b"\r" not in ln and b"\n" not in ln for ln in lines)
    texts = []
    for i, ln in enumerate(lines):
        sep = b" " if i == len(lines) - 1 else b"-"
        assert ln[:4] == str(code).encode() + sep, ln
        text = ln[4:].decode()
        if enhanced:  # RFC 2034 §4: the enhanced code goes on every line
            assert text.startswith(enhanced + " ")
            text = text[len(enhanced) + 1:]
        texts.append(text)
    return texts


def answered(event: Event | None, code: int, enhanced: str, *, close: bool = False) -> Reply:
    assert isinstance(event, Answered), event
    assert event.close is close
    check_reply(event.reply, code, enhanced)
    return event.reply


def events(proto: ServerProtocol, data: bytes = b"") -> list[Event]:
    """Feed ``data`` and drain every event, without deciding anything."""
    if data:
        proto.feed(data)
    out = []
    while (ev := proto.next_event()) is not None:
        out.append(ev)
    return out


def one(proto: ServerProtocol, data: bytes) -> Event:
    evs = events(proto, data)
    assert len(evs) == 1, evs
    return evs[0]


def session(proto: ServerProtocol, data: bytes, sink: Sink | None = None) -> list[Event]:
    """Like a permissive inbound session: accept every MAIL and RCPT, start DATA into ``sink``."""
    proto.feed(data)
    out: list[Event] = []
    while (ev := proto.next_event()) is not None:
        out.append(ev)
        if isinstance(ev, MailRequest):
            proto.accept_mail(ev.args)
        elif isinstance(ev, RcptRequest):
            proto.accept_rcpt(ev.args)
        elif isinstance(ev, DataRequest):
            proto.begin_data(sink if sink is not None else Sink())
    return out


def new(**limits: Any) -> ServerProtocol:
    return ServerProtocol(HOST, IP, Limits(**limits))


def greeted(**limits: Any) -> ServerProtocol:
    proto = new(**limits)
    answered(one(proto, b"EHLO client.test\r\n"), 250, "")
    return proto


def with_transaction(**limits: Any) -> ServerProtocol:
    proto = greeted(**limits)
    evs = session(proto, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert [type(e) for e in evs] == [MailRequest, RcptRequest]
    return proto


# --- the happy path -------------------------------------------------------------------------------
def test_happy_path_step_by_step() -> None:
    proto = new(message_size=1_000_000)

    ev = one(proto, b"EHLO client.test\r\n")
    assert isinstance(ev, Answered) and ev.line == "EHLO client.test"
    texts = check_reply(ev.reply, 250, "")
    assert texts[0] == f"{HOST} Hello client.test [{IP}]"
    assert {"PIPELINING", "SIZE 1000000", "8BITMIME", "ENHANCEDSTATUSCODES"} <= set(texts[1:])
    assert len(texts) >= 5
    assert proto.helo_name == "client.test" and proto.esmtp

    ev = one(proto, b"MAIL FROM:<alice@a.test> SIZE=500 BODY=8BITMIME\r\n")
    assert isinstance(ev, MailRequest)
    assert ev.line == "MAIL FROM:<alice@a.test> SIZE=500 BODY=8BITMIME"
    assert ev.args.address == Address("alice", "a.test")
    assert (ev.args.size, ev.args.body) == (500, "8BITMIME")
    assert proto.mail is None  # nothing changes until the session accepts
    proto.accept_mail(ev.args)
    mail = ev.args

    rcpts = []
    for to in (b"bob@b.test", b"carol@c.test"):
        ev = one(proto, b"RCPT TO:<" + to + b">\r\n")
        assert isinstance(ev, RcptRequest)
        assert ev.args.path == to.decode()
        proto.accept_rcpt(ev.args)
        rcpts.append(ev.args)

    ev = one(proto, b"DATA\r\n")
    assert ev == DataRequest("DATA")
    assert not proto.in_data
    sink = Sink()
    proto.begin_data(sink)
    assert proto.in_data

    assert events(proto, b"Subject: hi\r\n\r\n..dot\r\n") == []
    ev = one(proto, b".\r\n")
    assert isinstance(ev, MessageEnd)
    assert ev.mail == mail
    assert ev.rcpts == tuple(rcpts)
    assert bytes(sink.data) == b"Subject: hi\r\n\r\n.dot\r\n"
    assert ev.size == len(sink.data)
    assert ev.raw == len(b"Subject: hi\r\n\r\n..dot\r\n.\r\n")
    assert ev.error is None
    assert not proto.in_data
    assert proto.mail is None and proto.rcpts == []  # the transaction is over
    assert proto.helo_name == "client.test"  # the session is not

    answered(one(proto, b"QUIT\r\n"), 221, "2.0.0", close=True)


def test_pipelined_commands_in_one_feed_give_events_in_order() -> None:
    proto = new()
    sink = Sink()
    evs = session(proto, b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
                         b"RCPT TO:<e@f.test>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n", sink)
    assert [type(e) for e in evs] == [Answered, MailRequest, RcptRequest, RcptRequest,
                                      DataRequest, MessageEnd, Answered]
    end = evs[5]
    assert isinstance(end, MessageEnd)
    assert [r.path for r in end.rcpts] == ["c@d.test", "e@f.test"]
    assert bytes(sink.data) == b"hello\r\n"
    answered(evs[6], 221, "2.0.0", close=True)


def test_pipelined_two_transactions() -> None:
    proto = greeted()
    sinks = [Sink(), Sink()]
    proto.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\none\r\n.\r\n"
               b"MAIL FROM:<>\r\nRCPT TO:<e@f.test>\r\nDATA\r\ntwo\r\n.\r\nNOOP\r\n")
    ends: list[MessageEnd] = []
    answers: list[Event] = []
    while (ev := proto.next_event()) is not None:
        if isinstance(ev, MailRequest):
            proto.accept_mail(ev.args)
        elif isinstance(ev, RcptRequest):
            proto.accept_rcpt(ev.args)
        elif isinstance(ev, DataRequest):
            proto.begin_data(sinks[len(ends)])
        elif isinstance(ev, MessageEnd):
            ends.append(ev)
        else:
            answers.append(ev)
    assert len(answers) == 1
    answered(answers[0], 250, "2.0.0")  # the NOOP after the second message
    assert [bytes(s.data) for s in sinks] == [b"one\r\n", b"two\r\n"]
    assert [e.mail.path for e in ends] == ["a@b.test", ""]
    assert [e.rcpts[0].path for e in ends] == ["c@d.test", "e@f.test"]


def test_events_wait_for_a_complete_line() -> None:
    proto = new()
    for piece in (b"EH", b"LO cli", b"ent.test", b"\r"):
        assert events(proto, piece) == []
    answered(one(proto, b"\n"), 250, "")


# --- refusals by the session change nothing -------------------------------------------------------
def test_refused_mail_and_rcpt_leave_state_unchanged() -> None:
    proto = greeted(recipients=2)
    ev = one(proto, b"MAIL FROM:<a@b.test>\r\n")
    assert isinstance(ev, MailRequest)  # not accepted: the session refused it
    ev = one(proto, b"RCPT TO:<c@d.test>\r\n")
    answered(ev, 503, "5.5.1")
    session(proto, b"MAIL FROM:<a@b.test>\r\n")
    for _ in range(5):  # refused recipients do not use up the limit
        assert isinstance(one(proto, b"RCPT TO:<c@d.test>\r\n"), RcptRequest)
    assert proto.rcpts == []
    answered(one(proto, b"DATA\r\n"), 503, "5.5.1")


# --- sequence errors (RFC 5321 §4.1.4) ------------------------------------------------------------
def test_mail_before_ehlo() -> None:
    proto = new()
    rep = answered(one(proto, b"MAIL FROM:<a@b.test>\r\n"), 503, "5.5.1")
    assert "EHLO" in str(rep.text)


def test_rcpt_before_mail() -> None:
    answered(one(greeted(), b"RCPT TO:<c@d.test>\r\n"), 503, "5.5.1")
    answered(one(new(), b"RCPT TO:<c@d.test>\r\n"), 503, "5.5.1")


def test_data_before_mail_and_before_rcpt() -> None:
    proto = greeted()
    rep = answered(one(proto, b"DATA\r\n"), 503, "5.5.1")
    assert "MAIL" in str(rep.text)
    session(proto, b"MAIL FROM:<a@b.test>\r\n")
    rep = answered(one(proto, b"DATA\r\n"), 503, "5.5.1")
    assert "RCPT" in str(rep.text)
    assert not proto.in_data


def test_nested_mail() -> None:
    proto = with_transaction()
    answered(one(proto, b"MAIL FROM:<x@y.test>\r\n"), 503, "5.5.1")
    assert proto.mail is not None and proto.mail.path == "a@b.test"


def test_rset_clears_transaction() -> None:
    proto = with_transaction()
    ev = one(proto, b"RSET\r\n")
    answered(ev, 250, "2.0.0")
    assert proto.mail is None and proto.rcpts == []
    answered(one(proto, b"RCPT TO:<c@d.test>\r\n"), 503, "5.5.1")
    assert isinstance(one(proto, b"MAIL FROM:<x@y.test>\r\n"), MailRequest)
    assert proto.helo_name == "client.test"


def test_rset_with_argument_is_501_and_keeps_transaction() -> None:
    proto = with_transaction()
    answered(one(proto, b"RSET now\r\n"), 501, "5.5.4")
    assert proto.mail is not None


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_ehlo_resets_transaction(verb: bytes) -> None:
    proto = with_transaction()
    answered(one(proto, verb + b" other.test\r\n"), 250, "")
    assert proto.mail is None and proto.rcpts == []
    assert proto.helo_name == "other.test"
    assert proto.esmtp is (verb == b"EHLO")
    answered(one(proto, b"DATA\r\n"), 503, "5.5.1")


def test_bad_ehlo_changes_nothing() -> None:
    proto = with_transaction()
    answered(one(proto, b"EHLO\r\n"), 501, "5.5.4")
    answered(one(proto, b"EHLO two words\r\n"), 501, "5.5.4")
    assert proto.mail is not None and proto.helo_name == "client.test"
    fresh = new()
    answered(one(fresh, b"HELO \r\n"), 501, "5.5.4")
    answered(one(fresh, b"MAIL FROM:<a@b.test>\r\n"), 503, "5.5.1")


def test_helo_is_single_line_and_offers_no_extensions() -> None:
    proto = new()
    ev = one(proto, b"HELO client.test\r\n")
    assert isinstance(ev, Answered)
    texts = check_reply(ev.reply, 250, "")
    assert texts == [f"{HOST} Hello client.test [{IP}]"]
    assert not proto.esmtp
    for params in (b"SIZE=100", b"BODY=8BITMIME", b"SIZE=1 BODY=7BIT"):
        answered(one(proto, b"MAIL FROM:<a@b.test> " + params + b"\r\n"), 555, "5.5.4")
    assert isinstance(one(proto, b"MAIL FROM:<a@b.test>\r\n"), MailRequest)


# --- other commands -------------------------------------------------------------------------------
def test_vrfy_expn_noop_help() -> None:
    proto = new()
    rep = answered(one(proto, b"VRFY alice\r\n"), 252, "2.5.2")
    assert "VRFY" in str(rep.text)
    answered(one(proto, b"EXPN staff\r\n"), 502, "5.5.1")
    answered(one(proto, b"NOOP\r\n"), 250, "2.0.0")
    answered(one(proto, b"noop whatever\r\n"), 250, "2.0.0")
    ev = one(proto, b"HELP\r\n")
    assert isinstance(ev, Answered)
    texts = check_reply(ev.reply, 214, "2.0.0")
    assert len(texts) >= 2 and "EHLO" in texts[0]


def test_commands_outside_the_transaction_keep_it() -> None:
    proto = with_transaction()
    for cmd in (b"NOOP", b"VRFY x", b"EXPN x", b"HELP"):
        assert isinstance(one(proto, cmd + b"\r\n"), Answered)
    assert proto.mail is not None and len(proto.rcpts) == 1


def test_quit_closes() -> None:
    proto = new()
    ev = one(proto, b"QUIT\r\n")
    rep = answered(ev, 221, "2.0.0", close=True)
    assert HOST in str(rep.text)
    answered(one(proto, b"QUIT now\r\n"), 501, "5.5.4")  # not a QUIT: no close


@pytest.mark.parametrize("line", [b"FOO", b"STARTTLS?", b"", b"  "])
def test_unknown_command(line: bytes) -> None:
    ev = one(new(), line + b"\r\n")
    answered(ev, 500, "5.5.2")
    assert isinstance(ev, Answered) and ev.line == line.decode()


def test_starttls_and_auth_without_tls_on_the_listener_are_not_implemented() -> None:
    ev = one(new(), b"STARTTLS\r\n")
    answered(ev, 502, "5.5.1")
    ev = one(greeted(), b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    answered(ev, 502, "5.5.1")
    assert isinstance(ev, Answered) and ev.line == "AUTH PLAIN"  # the secret is never echoed


# --- line limits and bad characters ---------------------------------------------------------------
def test_long_line_tail_is_not_executed_one_feed() -> None:
    proto = greeted()
    line = b"NOOP " + b"x" * (3000 - 12) + b" QUIT\r\n"
    assert len(line) == 3000
    ev = one(proto, line)
    answered(ev, 500, "5.5.6")
    assert isinstance(ev, Answered) and ev.line is None
    answered(one(proto, b"NOOP\r\n"), 250, "2.0.0")


@pytest.mark.parametrize("chunk", [1, 7, 100, 2048, 2049, 2050])
def test_long_line_tail_is_not_executed_chunked(chunk: int) -> None:
    proto = greeted()
    line = b"x" * 2994 + b"QUIT\r\n"
    evs: list[Event] = []
    for i in range(0, len(line), chunk):
        evs += events(proto, line[i:i + chunk])
    assert len(evs) == 1
    answered(evs[0], 500, "5.5.6")
    # The long line is over, the next one is a command again.
    answered(one(proto, b"NOOP\r\n"), 250, "2.0.0")


@pytest.mark.parametrize("limit", [512, 600, 2048])
def test_line_of_exactly_the_limit_is_accepted_however_split(limit: int) -> None:
    line = b"NOOP " + b"y" * (limit - 5) + b"\r\n"
    assert len(line) == limit + 2
    for cut in range(limit - 2, limit + 3):
        proto = new(line_length=limit)
        evs = events(proto, line[:cut]) + events(proto, line[cut:])
        assert len(evs) == 1, (cut, evs)
        answered(evs[0], 250, "2.0.0")


@pytest.mark.parametrize("cut", [None, 600, 601, 602])
def test_line_one_over_the_limit_is_refused_however_split(cut: int | None) -> None:
    proto = new(line_length=600)
    line = b"NOOP " + b"y" * 596 + b"\r\n"
    evs = events(proto, line) if cut is None else events(proto, line[:cut]) + events(
        proto, line[cut:])
    assert len(evs) == 1
    answered(evs[0], 500, "5.5.6")
    answered(one(proto, b"NOOP\r\n"), 250, "2.0.0")


def test_long_line_with_crlf_in_a_later_feed_ends_where_it_should() -> None:
    """The CR of the long line's CRLF arrives with the long part, the LF with the next command:
    the next command must still run (and must not be swallowed with the long line)."""
    proto = greeted()
    evs = events(proto, b"NOOP " + b"z" * 3000 + b"\r")
    assert len(evs) == 1
    answered(evs[0], 500, "5.5.6")
    evs = events(proto, b"\nQUIT\r\n")
    assert len(evs) == 1
    answered(evs[0], 221, "2.0.0", close=True)


@pytest.mark.parametrize("line", [b"NO\x00OP", b"EHLO caf\xc3\xa9.test", b"MAIL FROM:<\xff@b.test>",
                                  b"\x00"])
def test_nul_and_non_ascii_are_500(line: bytes) -> None:
    proto = greeted()
    ev = one(proto, line + b"\r\n")
    answered(ev, 500, "5.5.2")
    assert isinstance(ev, Answered) and ev.line is not None
    assert proto.mail is None and proto.helo_name == "client.test"


def test_bare_lf_in_command_line_executes_nothing() -> None:
    proto = greeted()
    evs = events(proto, b"MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\n")
    assert len(evs) == 1
    rep = answered(evs[0], 500, "5.5.2")
    assert "CRLF" in str(rep.text)
    assert isinstance(evs[0], Answered) and evs[0].line is not None
    assert "\n" not in evs[0].line and "\r" not in evs[0].line  # safe to log
    assert proto.mail is None and proto.rcpts == []


@pytest.mark.parametrize("data", [b"NOOP\rQUIT\r\n", b"QUIT\nNOOP\r\n", b"NOOP\r\r\n",
                                  b"QUIT\n\r\n", b"\nQUIT\r\n"])
def test_bare_cr_or_lf_never_ends_a_command(data: bytes) -> None:
    proto = greeted()
    evs = events(proto, data)
    assert len(evs) == 1
    answered(evs[0], 500, "5.5.2")  # and not close=True


# --- limits ---------------------------------------------------------------------------------------
def test_too_many_recipients() -> None:
    proto = greeted(recipients=3)
    evs = session(proto, b"MAIL FROM:<a@b.test>\r\n" + b"".join(
        b"RCPT TO:<r%d@d.test>\r\n" % i for i in range(5)))
    assert [type(e) for e in evs] == [MailRequest, RcptRequest, RcptRequest, RcptRequest,
                                      Answered, Answered]
    for ev in evs[4:]:
        answered(ev, 452, "4.5.3")
    assert [r.path for r in proto.rcpts] == ["r0@d.test", "r1@d.test", "r2@d.test"]
    evs = session(proto, b"DATA\r\nx\r\n.\r\n")
    assert isinstance(evs[-1], MessageEnd) and len(evs[-1].rcpts) == 3


def test_declared_size_over_limit_refused_at_mail() -> None:
    proto = greeted(message_size=1000)
    answered(one(proto, b"MAIL FROM:<a@b.test> SIZE=1001\r\n"), 552, "5.3.4")
    assert isinstance(one(proto, b"MAIL FROM:<a@b.test> SIZE=1000\r\n"), MailRequest)


def test_oversize_message_ends_with_error_and_session_goes_on() -> None:
    proto = with_transaction(message_size=100)
    sink = Sink()
    assert isinstance(one(proto, b"DATA\r\n"), DataRequest)
    proto.begin_data(sink)
    body = b"".join(b"line %03d of the message\r\n" % i for i in range(50))
    evs = events(proto, body[:700]) + events(proto, body[700:] + b".\r\nMAIL FROM:<n@b.test>\r\n")
    assert len(evs) == 2
    end, mail = evs
    assert isinstance(end, MessageEnd)
    assert end.error is not None
    check_reply(end.error, 552, "5.3.4")
    assert end.size == len(body) and end.raw == len(body) + 3
    assert len(sink.data) <= 100
    assert isinstance(mail, MailRequest) and mail.args.path == "n@b.test"
    assert not proto.in_data


def test_bare_newline_in_message_ends_with_error() -> None:
    proto = with_transaction()
    session(proto, b"DATA\r\n")
    evs = events(proto, b"a\n.\nMAIL FROM:<evil@x.test>\r\n.\r\nNOOP\r\n")
    assert [type(e) for e in evs] == [MessageEnd, Answered]
    end = evs[0]
    assert isinstance(end, MessageEnd) and end.error is not None
    check_reply(end.error, 550, "5.6.0")
    answered(evs[1], 250, "2.0.0")


@pytest.mark.parametrize("accept", [False, True])
def test_long_text_line_in_message(accept: bool) -> None:
    proto = with_transaction(accept_long_lines=accept)
    sink = Sink()
    session(proto, b"DATA\r\n" + b"w" * 1500 + b"\r\n.\r\n", sink)
    assert not proto.in_data
    evs = session(proto, b"NOOP\r\n")
    answered(evs[0], 250, "2.0.0")
    if accept:
        assert bytes(sink.data) == b"w" * 1500 + b"\r\n"
    else:
        assert bytes(sink.data) == b""


def test_message_end_error_long_line() -> None:
    proto = with_transaction()
    assert isinstance(one(proto, b"DATA\r\n"), DataRequest)
    proto.begin_data(Sink())
    end = one(proto, b"w" * 1500 + b"\r\n.\r\n")
    assert isinstance(end, MessageEnd) and end.error is not None
    check_reply(end.error, 550, "5.6.0")


def test_discard_input() -> None:
    proto = greeted()
    proto.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert proto.pending_input
    proto.discard_input()
    assert not proto.pending_input
    assert proto.next_event() is None


# --- reply wire form ------------------------------------------------------------------------------
def test_reply_encoding_single_and_multi_line() -> None:
    assert Reply(250, "2.0.0", "OK").encode() == b"250 2.0.0 OK\r\n"
    assert Reply(354, "", "go ahead").encode() == b"354 go ahead\r\n"
    assert Reply(214, "2.0.0", ("a", "b", "c")).encode() == (
        b"214-2.0.0 a\r\n214-2.0.0 b\r\n214 2.0.0 c\r\n")
    assert Reply(250, "", ("mx", "PIPELINING")).encode() == b"250-mx\r\n250 PIPELINING\r\n"
