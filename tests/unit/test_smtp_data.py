"""DataReader (RFC 5321 §4.1.1.4, §4.5.2, §4.5.3.1.6; CVE-2023-51764): bytes in, message out.

The reader is fed the octets a client sends after 354. Every test builds that wire form the way a
client does (dot-stuffing each line, then ``.\\r\\n``) and checks what lands in the sink.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailferry.smtp.data import DataReader


class Sink:
    """Collects what the reader writes; ``writes`` keeps the chunk boundaries."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0

    def write(self, data: bytes, /) -> int:
        self.data += data
        self.writes += 1
        return len(data)


def stuff(lines: Iterable[bytes]) -> bytes:
    """A client's DATA: each line dot-stuffed (RFC 5321 §4.5.2) and CRLF-ended, then ``.CRLF``."""
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"


def message(lines: Iterable[bytes]) -> bytes:
    """What the server must deliver for ``lines``: each line CRLF-terminated, nothing else."""
    return b"".join(ln + b"\r\n" for ln in lines)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(reader: DataReader, chunks: Sequence[bytes]) -> bytes | None:
    """Feed chunks until the message ends; returns everything after the end marker (the rest of
    the chunk that held it plus the chunks never fed), or None if the message never ended."""
    for i, chunk in enumerate(chunks):
        assert not reader.done
        rest = reader.feed(chunk)
        if rest is not None:
            assert reader.done
            return rest + b"".join(chunks[i + 1:])
    assert not reader.done
    return None


def read(wire: bytes, chunks: Sequence[bytes] | None = None, *, max_size: int = 10**9,
         accept_long_lines: bool = False) -> tuple[DataReader, Sink, bytes | None]:
    sink = Sink()
    reader = DataReader(sink, max_size, accept_long_lines=accept_long_lines)
    rest = feed_all(reader, [wire] if chunks is None else chunks)
    return reader, sink, rest


# Lines of a message: any octets but CR and LF, with leading dots (the stuffing cases) common.
_plain = st.binary(max_size=60).map(lambda b: b.translate(None, b"\r\n"))
_dotted = st.builds(lambda n, b: b"." * n + b, st.integers(1, 3), _plain)
_near_limit = st.integers(990, 1010).map(lambda n: b"y" * n)
line = st.one_of(_plain, _dotted, st.sampled_from([b"", b".", b"..", b".\t"]), _near_limit)
lines_st = st.lists(line, max_size=12)


def _cuts(data: st.DataObject, length: int) -> list[int]:
    mode = data.draw(st.sampled_from(["random", "bytes", "none"]), label="mode")
    if mode == "bytes":  # 1-octet chunks: every boundary is cut
        return list(range(1, length))
    if mode == "none":
        return []
    return data.draw(st.lists(st.integers(0, length), max_size=20), label="cuts")


# --- round trip -----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(lines_st, st.binary(max_size=40), st.data())
def test_round_trip_any_lines_any_chunking(
    lines: list[bytes], tail: bytes, data: st.DataObject
) -> None:
    body = stuff(lines)
    wire = body + tail
    reader, sink, rest = read(wire, split_at(wire, _cuts(data, len(wire))),
                              accept_long_lines=True)
    expected = message(lines)
    assert bytes(sink.data) == expected
    assert reader.size == len(expected)
    assert reader.raw == len(body)
    assert rest == tail  # pipelined commands after the end marker come back untouched
    assert reader.error is None
    assert reader.long_line == any(len(ln) > 998 for ln in lines)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(_plain, _dotted), max_size=12), st.data())
def test_round_trip_short_lines_accepted_without_long_line_opt_in(
    lines: list[bytes], data: st.DataObject
) -> None:
    wire = stuff(lines)
    reader, sink, rest = read(wire, split_at(wire, _cuts(data, len(wire))))
    assert bytes(sink.data) == message(lines)
    assert rest == b""
    assert reader.error is None
    assert not (reader.long_line or reader.bare_newline or reader.too_big)


# --- end marker -----------------------------------------------------------------------------------
def test_empty_message() -> None:
    reader, sink, rest = read(b".\r\n")
    assert rest == b""
    assert reader.done
    assert bytes(sink.data) == b""
    assert (reader.size, reader.raw) == (0, 3)
    assert reader.error is None


def test_empty_message_with_pipelined_commands() -> None:
    reader, sink, rest = read(b".\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n")
    assert rest == b"MAIL FROM:<a@b.test>\r\nQUIT\r\n"
    assert bytes(sink.data) == b""
    assert reader.raw == 3


def test_empty_message_split_in_single_octets() -> None:
    _reader, sink, rest = read(b".\r\n", [b".", b"\r", b"\n"])
    assert rest == b""
    assert bytes(sink.data) == b""


WIRE = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"
MARK = WIRE.index(b"\r\n.\r\n")


@pytest.mark.parametrize("cut", range(1, len(WIRE)))
def test_end_marker_split_across_two_feeds_at_every_position(cut: int) -> None:
    reader, sink, rest = read(WIRE, [WIRE[:cut], WIRE[cut:]])
    assert bytes(sink.data) == b"Subject: x\r\n\r\nbody\r\n"
    assert rest == b"QUIT\r\n"
    assert reader.raw == MARK + 5


@pytest.mark.parametrize("first", range(MARK, MARK + 5))
@pytest.mark.parametrize("width", range(1, 5))
def test_end_marker_split_into_three_feeds(first: int, width: int) -> None:
    second = first + width
    _reader, sink, rest = read(WIRE, [WIRE[:first], WIRE[first:second], WIRE[second:]])
    assert bytes(sink.data) == b"Subject: x\r\n\r\nbody\r\n"
    assert rest == b"QUIT\r\n"


def test_message_goes_on_until_the_marker_arrives() -> None:
    sink = Sink()
    reader = DataReader(sink, 10**6)
    for chunk in (b"a\r\n", b".", b".b\r\n", b"\r\n", b".", b"\r"):
        assert reader.feed(chunk) is None
        assert not reader.done
    assert reader.feed(b"\n") == b""
    assert reader.done
    assert bytes(sink.data) == b"a\r\n.b\r\n\r\n"
    assert reader.error is None


# --- SMTP smuggling (CVE-2023-51764 and friends) --------------------------------------------------
SMUGGLED = b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\nevil\r\n"


@pytest.mark.parametrize("fake", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r"])
@pytest.mark.parametrize("chunked", [False, True])
def test_fake_end_markers_are_content_and_refused(fake: bytes, chunked: bool) -> None:
    wire = b"hello" + fake + SMUGGLED + b".\r\nQUIT\r\n"
    chunks = [wire[i:i + 1] for i in range(len(wire))] if chunked else [wire]
    reader, _sink, rest = read(wire, chunks)
    # Only the real CRLF.CRLF ends the message: the smuggled commands are never handed back.
    assert rest == b"QUIT\r\n"
    assert reader.raw == len(wire) - len(b"QUIT\r\n")
    err = reader.error
    assert err is not None
    assert (err.code, err.enhanced) == (550, "5.6.0")
    assert "bare CR or LF" in str(err.text)


@pytest.mark.parametrize("bare", [b"\r", b"\n"])
@pytest.mark.parametrize(
    "where", ["start", "middle", "before-crlf", "after-crlf", "before-marker"]
)
def test_bare_newline_anywhere_is_refused_but_message_ends(bare: bytes, where: str) -> None:
    body = {
        "start": bare + b"abc\r\ndef\r\n",
        "middle": b"abc" + bare + b"def\r\n",
        "before-crlf": b"abc" + bare + b"\r\n",
        "after-crlf": b"abc\r\n" + bare + b"def\r\n",
        "before-marker": b"abc\r\n" + bare + b"\r\n",
    }[where]
    reader, _sink, rest = read(body + b".\r\nNOOP\r\n")
    assert rest == b"NOOP\r\n"
    assert reader.bare_newline
    err = reader.error
    assert err is not None and (err.code, err.enhanced) == (550, "5.6.0")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_plain, _dotted), max_size=8), st.sampled_from([b"\r", b"\n"]),
       st.data())
def test_inserted_bare_newline_always_refused(
    lines: list[bytes], bare: bytes, data: st.DataObject
) -> None:
    body = stuff(lines)[:-3]  # the lines, without ".\r\n"
    pos = data.draw(st.integers(0, len(body)), label="pos")
    # A final ordinary line keeps the real end marker intact wherever the bare octet went.
    wire = body[:pos] + bare + body[pos:] + b"last\r\n.\r\nRSET\r\n"
    reader, sink, rest = read(wire, split_at(wire, _cuts(data, len(wire))))
    assert rest == b"RSET\r\n"
    err = reader.error
    assert err is not None and (err.code, err.enhanced) == (550, "5.6.0")
    # Nothing from the refusal point on reached the sink: it holds whole lines before it.
    assert message(lines).startswith(bytes(sink.data))


# --- dot-unstuffing -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"..\r\n.\r\n", b".\r\n"),  # a line that is a single dot
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..b\r\n..\r\n.\r\n", b"a\r\n.b\r\n.\r\n"),
        (b"a..b\r\n.\r\n", b"a..b\r\n"),  # dots inside a line are content
        (b".x\r\n.\r\n", b"x\r\n"),  # RFC 5321 §4.5.2: the first dot goes even if not doubled
    ],
)
def test_dot_unstuffing(wire: bytes, expected: bytes) -> None:
    reader, sink, _ = read(wire)
    assert bytes(sink.data) == expected
    assert reader.size == len(expected)


# --- size limit -----------------------------------------------------------------------------------
def test_message_of_exactly_max_size_is_accepted() -> None:
    lines = [b"x" * 8] * 10  # 10 lines of 10 octets
    reader, sink, rest = read(stuff(lines), max_size=100)
    assert reader.error is None
    assert bytes(sink.data) == message(lines)
    assert rest == b""


def test_message_one_octet_over_max_size_is_refused() -> None:
    lines = [b"x" * 8] * 9 + [b"x" * 9]
    reader, sink, rest = read(stuff(lines), max_size=100)
    err = reader.error
    assert err is not None and (err.code, err.enhanced) == (552, "5.3.4")
    assert len(sink.data) <= 100
    assert rest == b""


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_plain, _dotted), max_size=20), st.integers(0, 400),
       st.binary(max_size=20), st.data())
def test_size_limit_streamed(
    lines: list[bytes], max_size: int, tail: bytes, data: st.DataObject
) -> None:
    body = stuff(lines)
    wire = body + tail
    reader, sink, rest = read(wire, split_at(wire, _cuts(data, len(wire))), max_size=max_size)
    expected = message(lines)
    assert rest == tail  # an oversize message is read to its end: the session stays usable
    assert reader.raw == len(body)
    assert len(sink.data) <= max_size
    assert expected.startswith(bytes(sink.data))
    if len(expected) > max_size:
        assert reader.error is not None
        assert (reader.error.code, reader.error.enhanced) == (552, "5.3.4")
    else:
        assert reader.error is None
        assert bytes(sink.data) == expected


def test_huge_message_over_limit_still_finds_end() -> None:
    chunk = b"z" * 70 + b"\r\n"
    wire = chunk * 20_000 + b".\r\nQUIT\r\n"
    chunks = [wire[i:i + 4096] for i in range(0, len(wire), 4096)]
    reader, sink, rest = read(wire, chunks, max_size=10_000)
    assert rest == b"QUIT\r\n"
    assert len(sink.data) <= 10_000
    assert reader.error is not None and reader.error.code == 552


# --- long lines (RFC 5321 §4.5.3.1.6: 1000 octets with CRLF, i.e. 998 characters) -----------------
def test_998_character_line_is_fine() -> None:
    reader, sink, _ = read(stuff([b"a" * 998, b"b"]))
    assert reader.error is None
    assert not reader.long_line
    assert bytes(sink.data) == message([b"a" * 998, b"b"])


def test_stuffed_dot_does_not_count_towards_line_length() -> None:
    line = b"." + b"a" * 997  # 998 characters; 999 on the wire after dot-stuffing
    reader, sink, _ = read(stuff([line]))
    assert reader.error is None
    assert bytes(sink.data) == line + b"\r\n"


@pytest.mark.parametrize("length", [999, 1000, 5000])
def test_line_over_998_characters_is_flagged(length: int) -> None:
    reader, _sink, rest = read(stuff([b"a", b"b" * length, b"c"]) + b"QUIT\r\n")
    assert reader.long_line
    err = reader.error
    assert err is not None and (err.code, err.enhanced) == (550, "5.6.0")
    assert "998" in str(err.text)
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize("length", [999, 1000, 5000])
def test_long_line_accepted_intact_when_allowed(length: int) -> None:
    lines = [b"a", b"b" * length, b"c"]
    reader, sink, _ = read(stuff(lines), accept_long_lines=True)
    assert reader.long_line
    assert reader.error is None
    assert bytes(sink.data) == message(lines)


# Lines longer than the 64 KiB tail-flush threshold, in several shapes.
HUGE = [
    b"q" * 200_000,
    b"." + b"q" * 100_000,  # sent as "..qqq"
    b".." + b"q" * 100_000,  # sent as "...qqq"
    b"q" * (64 * 1024 - 1),
    b"q" * (64 * 1024),
    b"q" * (64 * 1024 + 1),
]


@pytest.mark.parametrize("huge", HUGE, ids=lambda b: f"{b[:3]!r}x{len(b)}")
@pytest.mark.parametrize("chunk", [1000, 4096, 65536, 10**7])
def test_very_long_line_delivered_intact(huge: bytes, chunk: int) -> None:
    lines = [b"before", huge, b"..after", b"end"]
    wire = stuff(lines) + b"NOOP\r\n"
    chunks = [wire[i:i + chunk] for i in range(0, len(wire), chunk)]
    reader, sink, rest = read(wire, chunks, accept_long_lines=True)
    assert bytes(sink.data) == message(lines)
    assert reader.size == len(message(lines))
    assert reader.error is None and reader.long_line
    assert rest == b"NOOP\r\n"


@pytest.mark.parametrize("huge", HUGE[:3], ids=lambda b: f"{b[:3]!r}x{len(b)}")
def test_very_long_line_cr_and_lf_in_different_feeds(huge: bytes) -> None:
    wire = stuff([huge, b"next"])
    at = wire.index(b"\r\n")  # the CRLF that ends the huge line
    for cut in (at, at + 1, at + 2):
        reader, sink, rest = read(wire, [wire[:cut], wire[cut:]], accept_long_lines=True)
        assert bytes(sink.data) == message([huge, b"next"])
        assert rest == b""
        assert reader.error is None


def test_very_long_line_refused_without_opt_in_and_not_delivered() -> None:
    huge = b"q" * 200_000
    wire = stuff([b"first", huge, b"last"]) + b"QUIT\r\n"
    chunks = [wire[i:i + 4096] for i in range(0, len(wire), 4096)]
    reader, sink, rest = read(wire, chunks)
    assert rest == b"QUIT\r\n"
    err = reader.error
    assert err is not None and (err.code, err.enhanced) == (550, "5.6.0")
    assert b"q" not in sink.data  # nothing of the long line went to the sink


def test_very_long_line_with_bare_cr_is_refused() -> None:
    huge = b"q" * 70_000 + b"\r" + b"q" * 70_000
    wire = huge + b"\r\n.\r\n"
    chunks = [wire[i:i + 4096] for i in range(0, len(wire), 4096)]
    reader, _sink, rest = read(wire, chunks, accept_long_lines=True)
    assert rest == b""
    assert reader.bare_newline
    assert reader.error is not None and reader.error.enhanced == "5.6.0"


@settings(max_examples=40, deadline=None)
@given(st.integers(60_000, 140_000), st.sampled_from([b"", b".", b".."]),
       st.lists(st.integers(0, 150_000), max_size=12))
def test_very_long_line_any_chunking(length: int, lead: bytes, cuts: list[int]) -> None:
    lines = [b"x", lead + b"w" * length, b".y"]
    wire = stuff(lines)
    reader, sink, rest = read(wire, split_at(wire, cuts), accept_long_lines=True)
    assert bytes(sink.data) == message(lines)
    assert rest == b""
    assert reader.raw == len(wire)


# --- performance ----------------------------------------------------------------------------------
def test_ten_mebibytes_in_64k_chunks_is_linear() -> None:
    """Regression guard for the O(n²) rescan of the whole buffer on every read (was 0.6 s, is
    ~0.1 s): the bound is generous on purpose."""
    line = b"x" * 76 + b"\r\n"
    body = line * (10 * 1024 * 1024 // len(line))
    wire = body + b".\r\n"
    chunks = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
    sink = Sink()
    reader = DataReader(sink, 64 * 1024 * 1024)
    start = time.perf_counter()
    rest = feed_all(reader, chunks)
    elapsed = time.perf_counter() - start
    assert rest == b""
    assert reader.size == len(body)
    assert len(sink.data) == len(body)
    assert elapsed < 2.0, f"10 MiB took {elapsed:.2f} s"
