import itertools
import json

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanobanana._errors import APITimeoutError, UnexpectedResponseError
from nanobanana._sse import SSEParser, SSEReader, SSETooLargeError, StreamIdleError


def parse_all(chunks, **kwargs):
    parser = SSEParser(**kwargs)
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.end())
    return [(e.event, e.data, e.id) for e in events]


def parse_until_limit(chunks, **limits):
    """The events handed over, and the limit error's message (None when none tripped)."""
    parser = SSEParser(**limits)
    events = []
    try:
        for chunk in chunks:
            events.extend(parser.feed(chunk))
        events.extend(parser.end())
    except SSETooLargeError as error:
        return [(e.event, e.data) for e in events], str(error)
    return [(e.event, e.data) for e in events], None


STREAM = (
    b": a comment the decoder ignores\r\n"
    b'data: {"type":"status","message":"D\xc3\xa9marrage \xe2\x80\x94 \xf0\x9f\x8d\x8c",'
    b'"progress":0}\r\n'
    b"\r\n"
    b"not json at all\n"
    b"\n"
    b"data: keep-alive\r"
    b"\r"
    b"event: custom\n"
    b"id: 7\n"
    b'data: {"type":"status","progress":50}\n'
    b"\n"
    b'data: {"type":"complete","data":{"imageUrls":["https://cdn/\xe4\xb8\xad.png"]}}\r\n\r\n'
)

EXPECTED = [
    (
        "message",
        '{"type":"status","message":"Démarrage — 🍌","progress":0}',
        "",
    ),
    ("message", "keep-alive", ""),
    ("custom", '{"type":"status","progress":50}', "7"),
    ("message", '{"type":"complete","data":{"imageUrls":["https://cdn/中.png"]}}', "7"),
]


def test_parser_reads_a_stream_in_one_piece():
    assert parse_all([STREAM]) == EXPECTED


def test_parser_reads_a_stream_one_byte_at_a_time():
    assert parse_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_a_crlf_split_between_reads_is_one_line_break_not_two():
    events = parse_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [("message", "a\nb", "")]


def test_lone_cr_line_endings_are_line_breaks():
    assert parse_all([b"data: x\r\rdata: y\r\r"]) == [("message", "x", ""), ("message", "y", "")]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_any_chunking_of_the_bytes_parses_the_same(data):
    cuts = sorted(data.draw(st.sets(st.integers(1, len(STREAM) - 1), max_size=40)))
    bounds = [0, *cuts, len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse_all(chunks) == EXPECTED


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(_text, min_size=1, max_size=8),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    data=st.data(),
)
def test_random_utf8_events_survive_random_chunkings(messages, newline, data):
    raw = b"".join(
        b"data: " + json.dumps({"m": m}, ensure_ascii=False).encode() + newline + newline
        for m in messages
    )
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=20)))
    bounds = [0, *cuts, len(raw)]
    chunks = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    parsed = [json.loads(d)["m"] for _, d, _ in parse_all(chunks)]
    assert parsed == messages


def test_a_byte_order_mark_at_the_start_is_dropped():
    assert parse_all([b"\xef\xbb", b"\xbfdata: 1\n\n"]) == [("message", "1", "")]


def test_invalid_utf8_is_replaced_not_fatal():
    assert parse_all([b"data: \xff\xfe\n\n"]) == [("message", "\ufffd\ufffd", "")]


def test_an_event_cut_by_the_end_of_the_stream_is_still_dispatched():
    assert parse_all([b"data: {}\n\ndata: last"]) == [
        ("message", "{}", ""),
        ("message", "last", ""),
    ]


def test_a_line_longer_than_the_maximum_raises_before_it_is_complete():
    parser = SSEParser(max_line_size=100)
    parser.feed(b"data: " + b"x" * 50)
    with pytest.raises(SSETooLargeError, match="max_line_size"):
        parser.feed(b"x" * 60)


def test_a_long_line_inside_one_big_read_raises_after_the_events_before_it():
    parser = SSEParser(max_line_size=100)
    events = parser.feed(b"data: 1\n\n" + b"data: " + b"y" * 200 + b"\n\ndata: 2\n\n")
    assert [e.data for e in events] == ["1"]
    with pytest.raises(SSETooLargeError, match="max_line_size"):
        parser.feed(b"data: 3\n\n")


def test_a_long_line_alone_in_a_read_raises_at_once():
    parser = SSEParser(max_line_size=100)
    with pytest.raises(SSETooLargeError, match="max_line_size"):
        parser.feed(b"data: " + b"y" * 200 + b"\n\n")


COMPLETE = b'data: {"type":"complete","data":{"imageUrls":["https://cdn/a.png"]}}\n\n'
BIG_COMMENT = b": " + b"c" * 2000 + b"\n"


@pytest.mark.parametrize(
    "chunks",
    [[COMPLETE + BIG_COMMENT], [COMPLETE, BIG_COMMENT]],
    ids=["one read", "two reads"],
)
def test_a_complete_event_before_an_oversized_line_is_handed_over_however_the_reads_cut(
    chunks,
):
    events, error = parse_until_limit(chunks, max_event_size=1000)
    assert events == [("message", COMPLETE[6:-2].decode())]
    assert "max_event_size" in error


def test_a_tripped_limit_keeps_raising_on_every_later_call():
    parser = SSEParser(max_event_size=10)
    assert [e.data for e in parser.feed(b"data: 1\n\ndata: 0123456789\n\n")] == ["1"]
    for call in (lambda: parser.feed(b"data: 2\n\n"), parser.end, parser.check):
        with pytest.raises(SSETooLargeError, match="max_event_size"):
            call()


def test_an_event_of_many_lines_larger_than_the_maximum_raises():
    parser = SSEParser(max_event_size=1000)
    for _ in range(17):  # 17 lines of 56 characters: 952, under the limit
        parser.feed(b"data: " + b"z" * 50 + b"\n")
    with pytest.raises(SSETooLargeError, match="max_event_size") as info:
        parser.feed(b"data: " + b"z" * 50 + b"\n")
    assert isinstance(info.value, UnexpectedResponseError)


_sse_line = st.one_of(
    st.builds(lambda t: "data: " + t, _text),
    st.builds(lambda t: ": " + t, _text),
    st.builds(lambda t: "data: " + t * 4, _text),  # now and then over a small limit
    st.just(""),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    lines=st.lists(_sse_line, max_size=16),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    max_line=st.integers(1, 80),
    max_event=st.integers(1, 200),
    data=st.data(),
)
def test_the_events_before_a_tripped_limit_and_the_limit_are_the_same_however_the_reads_cut(
    lines, newline, max_line, max_event, data
):
    raw = "".join(line + newline for line in lines).encode()
    limits = {"max_line_size": max_line, "max_event_size": max_event}
    whole = parse_until_limit([raw], **limits)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=20)))
    bounds = [0, *[c for c in cuts if c < len(raw)], len(raw)]
    chunks = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse_until_limit(chunks, **limits) == whole
    # One byte at a time too: the most a cut can differ from one read.
    assert parse_until_limit([raw[i : i + 1] for i in range(len(raw))], **limits) == whole


def test_comments_and_many_small_events_do_not_count_as_one_big_event():
    parser = SSEParser(max_event_size=100, max_line_size=100)
    events = []
    for _ in range(1000):
        events += parser.feed(b": heartbeat comment padding padding\ndata: 0123456789\n\n")
    assert len(events) == 1000


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        SSEParser(max_line_size=0)
    with pytest.raises(ValueError):
        SSEReader(_chunks([]), idle_timeout=0)


async def _chunks(items, *, stall_after=None, stalled=None):
    for i, item in enumerate(items):
        if stall_after is not None and i == stall_after:
            stalled.set()
            await anyio.sleep_forever()
        yield item


async def test_reader_iterates_events_across_reads():
    reader = SSEReader(_chunks([b"data: 1\n", b"\ndata: 2\n\n", b"data: 3"]))
    assert [e.data async for e in reader] == ["1", "2", "3"]
    assert reader.at_eof
    assert await reader.read() == []


async def test_reader_treats_silence_longer_than_the_idle_timeout_as_a_cut():
    stalled = anyio.Event()
    reader = SSEReader(
        _chunks([b"data: 1\n\n", b"never"], stall_after=1, stalled=stalled), idle_timeout=0.05
    )
    assert [e.data for e in await reader.read()] == ["1"]
    with pytest.raises(StreamIdleError, match="heartbeat") as info:
        await reader.read()
    assert stalled.is_set()
    assert isinstance(info.value, APITimeoutError)


async def test_reader_without_idle_timeout_waits_as_long_as_it_takes():
    stalled = anyio.Event()
    reader = SSEReader(
        _chunks([b"data: 1\n\n", b"x"], stall_after=1, stalled=stalled), idle_timeout=None
    )
    await reader.read()
    with anyio.move_on_after(0.05) as scope:
        await reader.read()
    assert scope.cancelled_caught


async def test_reader_hands_over_the_events_before_a_limit_then_raises_without_reading_on():
    taken = []

    async def chunks():
        for chunk in (b"data: 1\n\ndata: " + b"y" * 200 + b"\n", b"data: 2\n\n"):
            taken.append(chunk)
            yield chunk

    reader = SSEReader(chunks(), max_line_size=100)
    assert [e.data for e in await reader.read()] == ["1"]
    with pytest.raises(SSETooLargeError, match="max_line_size"):
        await reader.read()
    assert len(taken) == 1
    await reader.aclose()
