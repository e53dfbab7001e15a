"""Delivery status notifications (RFC 3464, RFC 6522): every test parses the produced bytes with
the stdlib ``email`` parser, the way a mail client would, and checks what a reader would see."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.envelope import Envelope, Recipient
from mailferry.queue.bounce import RecipientStatus, build_dsn, should_bounce

RECEIVED = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
NOW = RECEIVED + 5 * 86400
ORIGINAL = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
            b"Subject: quarterly numbers\r\nMessage-ID: <orig-1@example.org>\r\n"
            b"\r\nSECRET BODY LINE\r\n.\r\nmore body\r\n")


def envelope(sender: str = "alice@example.org") -> Envelope:
    return Envelope(
        msgid="MF7Q2K9X3A1", sender=sender,
        recipients=[Recipient("bob@example.net", "Bob@Example.NET", local=False)],
        received_at=RECEIVED, client_ip="192.0.2.1", helo="client.example.org", size=len(ORIGINAL),
    )


BOB = RecipientStatus(
    recipient="bob@example.net", original="Bob@Example.NET", action="failed", status="5.1.1",
    diagnostic="550 5.1.1 <bob@example.net>... User unknown", remote_mta="mx.example.net",
    last_attempt=NOW - 60, will_retry_until=None, remote_ip="192.0.2.7",
)
CAROL = RecipientStatus(
    recipient="carol@nowhere.example", original="carol@nowhere.example", action="failed",
    status="5.4.4", diagnostic="Host or domain name not found: nowhere.example",
    remote_mta=None, last_attempt=None, will_retry_until=None,
)
DAVE = RecipientStatus(
    recipient="dave@example.net", original="dave@example.net", action="delayed", status="4.4.1",
    diagnostic="451 4.7.1 Greylisted, try again later", remote_mta="mx2.example.net",
    last_attempt=RECEIVED + 4 * 3600, will_retry_until=RECEIVED + 5 * 86400,
)


def dsn(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "reporting_mta": "mail.example.org", "original_envelope": envelope(),
        "original_message": ORIGINAL, "failures": [BOB, CAROL], "kind": "failure",
        "now": NOW, "dsn_msgid": "MF7Q2K9XDSN", "postmaster": "postmaster@example.org",
    }
    args.update(overrides)
    return build_dsn(**args)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def parts(msg: EmailMessage) -> list[EmailMessage]:
    found = list(msg.iter_parts())
    assert all(isinstance(p, EmailMessage) for p in found)
    return found  # type: ignore[return-value]


def status_blocks(msg: EmailMessage) -> list[Message]:
    """The delivery-status part as the parser sees it: one header block per paragraph."""
    report = parts(msg)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return blocks


def human_text(msg: EmailMessage) -> str:
    """The explanation with line wrapping undone, so phrases can be searched for."""
    return " ".join(parts(msg)[0].get_content().split())


def utc(when: float) -> datetime:
    return datetime.fromtimestamp(when, UTC)


# --- structure ------------------------------------------------------------------------------------
def test_failure_top_level_headers() -> None:
    msg = parse(dsn())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.org>"
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@example.org"]
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Date"].datetime == utc(NOW)
    assert msg["Message-ID"] == "<MF7Q2K9XDSN@mail.example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"


def test_three_parts_in_rfc_6522_order() -> None:
    msg = parse(dsn())
    assert [p.get_content_type() for p in parts(msg)] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_per_message_fields() -> None:
    first = status_blocks(parse(dsn()))[0]
    assert first["Reporting-MTA"] == "dns; mail.example.org"
    assert first["X-Mailferry-Queue-ID"] == "MF7Q2K9X3A1"
    assert email.utils.parsedate_to_datetime(first["Arrival-Date"]) == utc(RECEIVED)


def test_per_recipient_fields() -> None:
    _, bob, carol = status_blocks(parse(dsn()))
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Original-Recipient"] == "rfc822; Bob@Example.NET"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>... User unknown"
    assert email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]) == utc(NOW - 60)
    assert bob["Will-Retry-Until"] is None

    assert carol["Final-Recipient"] == "rfc822; carol@nowhere.example"
    assert carol["Original-Recipient"] is None  # same as the final one
    assert carol["Status"] == "5.4.4"
    assert carol["Remote-MTA"] is None and carol["Last-Attempt-Date"] is None
    # Not an SMTP reply, so not labelled as one (RFC 3464 §2.3.6).
    assert carol["Diagnostic-Code"] == "X-Mailferry; Host or domain name not found: nowhere.example"


def test_human_part_quotes_recipients_and_the_remote_reply() -> None:
    text = human_text(parse(dsn()))
    assert ("<bob@example.net> (expanded from <Bob@Example.NET>): host mx.example.net "
            "[192.0.2.7] said: 550 5.1.1 <bob@example.net>... User unknown") in text
    assert "<carol@nowhere.example>: Host or domain name not found: nowhere.example" in text
    assert "mail.example.org" in text and "<postmaster@example.org>" in text
    assert "will not try again" in text


def test_original_headers_attached_and_body_left_out() -> None:
    data = dsn()
    headers = parts(parse(data))[2]
    assert headers.get_content() == (
        "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
        "Subject: quarterly numbers\r\nMessage-ID: <orig-1@example.org>\r\n")
    assert b"SECRET BODY LINE" not in data and b"more body" not in data


def test_delay_notice() -> None:
    msg = parse(dsn(kind="delay", failures=[DAVE], now=RECEIVED + 4 * 3600))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert msg.get_param("report-type") == "delivery-status"
    _, dave = status_blocks(msg)
    assert dave["Action"] == "delayed"
    assert dave["Status"] == "4.4.1"
    assert dave["Diagnostic-Code"] == "smtp; 451 4.7.1 Greylisted, try again later"
    assert email.utils.parsedate_to_datetime(dave["Will-Retry-Until"]) == \
        utc(RECEIVED + 5 * 86400)
    text = human_text(msg)
    until = email.utils.format_datetime(utc(RECEIVED + 5 * 86400))
    assert f"will keep trying until {until}" in text
    assert "host mx2.example.net said: 451 4.7.1 Greylisted, try again later" in text
    assert "not been delivered yet" in text and "will not try again" not in text


def test_wire_form_is_crlf_only_and_ends_with_the_closing_boundary() -> None:
    data = dsn()
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    boundary = parse(data).get_boundary()
    assert boundary is not None
    assert data.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert data.isascii()


def test_output_is_deterministic_and_boundary_follows_the_dsn_id() -> None:
    assert dsn() == dsn()
    a, b = parse(dsn()).get_boundary(), parse(dsn(dsn_msgid="MFOTHER")).get_boundary()
    assert a != b
    assert "MF7Q2K9XDSN" in (a or "")


# --- safety ---------------------------------------------------------------------------------------
INJECT = "\r\nBcc: victim@evil.test\r\n\r\n--=_MF7Q2K9XDSN/mail.example.org\r\nContent-Type: x/y"


def test_crlf_in_remote_reply_cannot_add_fields_or_parts() -> None:
    evil = dataclasses.replace(BOB, diagnostic="550 5.1.1 no" + INJECT,
                               remote_mta="mx.example.net" + INJECT)
    data = dsn(failures=[evil])
    msg = parse(data)
    assert msg["Bcc"] is None
    assert len(parts(msg)) == 3
    blocks = status_blocks(msg)
    assert len(blocks) == 2  # per-message + one recipient: no block smuggled in
    assert all(b["Bcc"] is None for b in blocks)
    diag = blocks[1]["Diagnostic-Code"]
    assert diag.startswith("smtp; 550 5.1.1 no Bcc: victim@evil.test --=_")
    assert blocks[1]["Remote-MTA"].startswith("dns; mx.example.net Bcc:")
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n")


def test_crlf_in_addresses_and_ids_cannot_add_header_fields() -> None:
    evil = dataclasses.replace(BOB, recipient="bob@example.net\r\nBcc: v@evil.test",
                               original="x\nBcc: v@evil.test")
    msg = parse(dsn(original_envelope=envelope("alice@example.org\r\nBcc: v@evil.test"),
                    failures=[evil], dsn_msgid="ID\r\nBcc: v@evil.test",
                    reporting_mta="mail.example.org\nBcc: v@evil.test"))
    assert msg["Bcc"] is None
    assert len(msg.get_all("To") or []) == 1
    assert all(b["Bcc"] is None for b in status_blocks(msg))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=60))
def test_any_remote_text_stays_inside_its_field(diagnostic: str, host: str) -> None:
    status = dataclasses.replace(BOB, diagnostic=diagnostic, remote_mta=host or None)
    data = dsn(failures=[status])
    msg = parse(data)
    assert len(parts(msg)) == 3
    blocks = status_blocks(msg)
    assert len(blocks) == 2
    assert set(blocks[1].keys()) <= {
        "Final-Recipient", "Original-Recipient", "Action", "Status", "Remote-MTA",
        "Diagnostic-Code", "Last-Attempt-Date"}
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n")
    assert data.isascii()


def test_huge_remote_reply_is_capped_and_lines_stay_short() -> None:
    words = " ".join(f"word{i}" for i in range(50_000))
    unbroken = "x" * 5000
    for diagnostic in (f"550 5.7.1 {words}", f"550 5.7.1 {unbroken}"):
        data = dsn(failures=[dataclasses.replace(BOB, diagnostic=diagnostic)])
        assert len(data) < 10_000
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        diag = status_blocks(parse(data))[1]["Diagnostic-Code"]
        assert diag.startswith("smtp; 550 5.7.1 ") and diag.endswith("[...]")
    data = dsn(failures=[dataclasses.replace(BOB, diagnostic=f"550 5.7.1 {words}")])
    assert max(len(line) for line in data.split(b"\r\n")) <= 78  # folded at spaces


def test_original_headers_containing_the_boundary_get_another_one() -> None:
    plain = parse(dsn()).get_boundary()
    sneaky = ORIGINAL.replace(b"\r\n\r\n", f"\r\nX-Trick: 1\r\n--{plain}\r\n\r\n".encode(), 1)
    msg = parse(dsn(original_message=sneaky))
    assert msg.get_boundary() != plain
    assert [p.get_content_type() for p in parts(msg)] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert f"--{plain}\r\n" in parts(msg)[2].get_content()


# --- the original header section ------------------------------------------------------------------
@pytest.mark.parametrize(("original", "expected"), [
    (b"Subject: lf\nX-A: 1\n\nbody\n", "Subject: lf\r\nX-A: 1\r\n"),
    (b"Subject: no body\r\n", "Subject: no body\r\n"),
    (b"Subject: no body, no newline", "Subject: no body, no newline\r\n"),
    (b"\r\nbody only", ""),
    (b"", ""),
    (b"Subject: folded\r\n continued\r\n\r\nbody", "Subject: folded\r\n continued\r\n"),
    (b"Subject: odd\r\r\nbody", "Subject: odd\r\n"),  # lone CR + CRLF: a blank line
    (b"Subject: mixed\n\r\nbody", "Subject: mixed\r\n"),
])
def test_header_section_extraction(original: bytes, expected: str) -> None:
    data = dsn(original_message=original)
    assert parts(parse(data))[2].get_content() == expected
    assert b"body" not in data.split(b"text/rfc822-headers", 1)[1].replace(b"no body", b"")


def test_eight_bit_original_headers_are_declared() -> None:
    original = "Subject: r\u00e9sum\u00e9\r\n\r\nbody\r\n".encode()
    data = dsn(original_message=original)
    assert re.search(rb"\r\nContent-Transfer-Encoding: 8bit\r\n", data)
    assert "r\u00e9sum\u00e9".encode() in data
    assert len(parts(parse(data))) == 3


# --- never bounce a bounce ------------------------------------------------------------------------
def test_should_bounce_only_for_a_real_sender() -> None:
    assert should_bounce(envelope("alice@example.org"))
    assert not should_bounce(envelope(""))


def test_no_dsn_for_the_null_sender() -> None:
    with pytest.raises(ValueError, match="null sender"):
        dsn(original_envelope=envelope(""))


def test_expired_recipient_may_fail_with_a_transient_status() -> None:
    """RFC 3463 §3.1: a 4.X.X code may accompany a failure report — given up after a temporary
    condition persisted (4.4.7: delivery time expired)."""
    expired = dataclasses.replace(
        BOB, status="4.4.7", diagnostic="451 4.7.1 Greylisted (gave up after 5 days)")
    _, block = status_blocks(parse(dsn(failures=[expired])))
    assert (block["Action"], block["Status"]) == ("failed", "4.4.7")
    assert block["Diagnostic-Code"] == "smtp; 451 4.7.1 Greylisted (gave up after 5 days)"


# --- arguments that make no sense -----------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    {"failures": []},
    {"kind": "delay"},  # BOB failed: not a delay
    {"kind": "failure", "failures": [DAVE]},
    {"failures": [dataclasses.replace(BOB, status="2.0.0")]},  # a success is no failure
    {"kind": "delay", "failures": [dataclasses.replace(DAVE, status="5.4.7")]},
    {"failures": [dataclasses.replace(BOB, status="5.1")]},
    {"failures": [dataclasses.replace(BOB, status="5.1.1\r\nBcc: x")]},
    {"kind": "warning"},
])
def test_inconsistent_arguments_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dsn(**overrides)
