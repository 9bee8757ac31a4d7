"""Property tests for everything that parses what a server sends.

- SSE framing: any content, cut into any pieces, parses as it does whole, also when
  the size limits trip (tests/test_sse.py holds the fixed-stream chunkings).
- A whole stream of arbitrary events, arbitrarily chunked, ends as one `complete` or
  one of our errors, with progress that never goes backwards and stays in 0-100.
- Retry-After: any text gives None or a wait within [0, cap], never an exception.
- JSON to values: unknown fields never break parsing; a missing required field raises
  `UnexpectedResponseError` naming it; any JSON at all gives a value or that error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from datetime import datetime, timezone
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from nanobanana import (
    AsyncNanoBanana,
    FakeClock,
    Generation,
    GenerationStatus,
    Model,
    NanoBananaError,
    PollPolicy,
    UnexpectedResponseError,
)
from nanobanana._retry import parse_retry_after
from nanobanana._sse import SSEParser, SSETooLargeError

# Modest budgets: the whole reliability directory runs in CI on every push.
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MORE = settings(SETTINGS, max_examples=120)
API = "https://api.test/api/v1"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def chunked(data: bytes, draw_cuts) -> list[bytes]:
    cuts = sorted(draw_cuts(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=25)))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- SSE framing -------------------------------------------------------------------------

_field_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=24,
)
sse_lines = st.one_of(
    st.builds(lambda t: "data: " + t, _field_text),
    st.builds(lambda t: "data:" + t, _field_text),
    st.builds(lambda t: ": " + t, _field_text),
    st.builds(lambda t: "event: " + t, _field_text),
    st.builds(lambda t: "id: " + t, _field_text.filter(lambda t: "\0" not in t)),
    st.just("retry: 100"),
    st.just(""),
    st.just("data"),
    _field_text,  # a line with no colon: a field name without a value
)


@st.composite
def sse_streams(draw):
    lines = draw(st.lists(sse_lines, max_size=20))
    endings = draw(
        st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines), max_size=len(lines))
    )
    text = "".join(line + end for line, end in zip(lines, endings, strict=True))
    if draw(st.booleans()):
        text += draw(sse_lines)  # and a last line cut by the end of the stream
    return text.encode()


def parse(chunks: list[bytes], **limits) -> tuple[list[tuple[str, str, str]], str | None]:
    """The events parsed, and the size limit's error if one tripped."""
    parser = SSEParser(**limits)
    events = []
    error = None
    try:
        for chunk in chunks:
            events.extend(parser.feed(chunk))
        events.extend(parser.end())
    except SSETooLargeError as exc:
        # The events before it are handed over first, whatever the cut.
        error = str(exc)
    return [(e.event, e.data, e.id) for e in events], error


@MORE
@given(stream=sse_streams(), data=st.data())
def test_any_stream_cut_anywhere_parses_as_it_does_whole(stream, data):
    assert parse(chunked(stream, data.draw)) == parse([stream])


@MORE
@given(
    stream=sse_streams(),
    max_line=st.integers(1, 60),
    max_event=st.integers(1, 200),
    data=st.data(),
)
def test_the_size_limits_trip_the_same_however_the_stream_is_cut(stream, max_line, max_event, data):
    limits = {"max_line_size": max_line, "max_event_size": max_event}
    whole = parse([stream], **limits)
    assert parse(chunked(stream, data.draw), **limits) == whole
    # Nothing larger than the event limit (in characters) got through.
    assert all(len(d) <= max_event for _, d, _ in whole[0])


# -- a whole stream of arbitrary events ----------------------------------------------------

progress_values = st.one_of(
    st.integers(-500, 500),
    st.floats(-1e6, 1e6),
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.text(max_size=5),
    st.none(),
)
status_events = st.fixed_dictionaries(
    {"type": st.just("status"), "progress": progress_values},
    optional={
        "message": json_scalars.filter(lambda v: not isinstance(v, float) or math.isfinite(v)),
        "generationId": st.sampled_from(["gen_1", "", 7]),
    },
)
complete_events = st.one_of(
    st.builds(
        lambda urls, gid: {
            "type": "complete",
            "progress": 100,
            "data": {"success": True, "imageUrls": urls, **({"generationId": gid} if gid else {})},
        },
        st.lists(st.just("https://cdn.test/img.png"), max_size=2),
        st.sampled_from([None, "gen_1"]),
    ),
    st.fixed_dictionaries({"type": st.just("complete")}, optional={"data": json_values}),
)
error_events = st.fixed_dictionaries(
    {"type": st.just("error")}, optional={"message": json_scalars, "data": json_values}
)
other_events = st.one_of(
    st.fixed_dictionaries({"type": st.text(max_size=8)}),
    json_values.filter(lambda v: not isinstance(v, dict)),
)
JUNK = [b": keep-alive\n\n", b"data: not json\n\n", b"data: {\n\n", b"event: x\n\n", b"id: 3\n\n"]


@st.composite
def event_streams(draw):
    items = draw(
        st.lists(
            st.one_of(
                status_events, complete_events, error_events, other_events, st.sampled_from(JUNK)
            ),
            max_size=12,
        )
    )
    parts = []
    for item in items:
        if isinstance(item, bytes):
            parts.append(item)
        else:
            text = json.dumps(item, allow_nan=True, ensure_ascii=draw(st.booleans()))
            parts.append(b"data: " + text.encode() + b"\n\n")
    return chunked(b"".join(parts), draw)


def _stream_client(chunks: list[bytes]) -> AsyncNanoBanana:
    async def body():
        for chunk in chunks:
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=body()
            )
        # A poll after a cut: the generation finished.
        data = {
            "id": request.url.params["id"],
            "processingStatus": "completed",
            "outputImageUrls": ["https://cdn.test/p.png"],
        }
        return httpx.Response(200, json={"data": data})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AsyncNanoBanana(
        api_key="nb_property_key",
        base_url=API,
        http_client=http,
        clock=FakeClock(),
        rng=random.Random(0),
        poll_policy=PollPolicy(first_delay=0.0, jitter=0.0),
    )


@MORE
@given(chunks=event_streams())
def test_any_event_stream_ends_as_one_complete_or_one_of_our_errors(chunks):
    async def consume():
        client = _stream_client(chunks)
        events = []
        error = None
        try:
            async for event in client.stream("p"):
                events.append(event)  # noqa: PERF401 - the events before an error count
        except NanoBananaError as exc:
            error = exc
        finally:
            await client.http_client.aclose()
            await client.aclose()
        assert client.governor_stats().active == 0
        return events, error

    events, error = asyncio.run(consume())
    tops = [e.progress for e in events]
    assert tops == sorted(tops)
    assert all(0 <= e.raw_progress <= 100 and 0 <= e.progress <= 100 for e in events)
    kinds = [e.type for e in events]
    if error is None:
        assert kinds[-1:] == ["complete"]
        assert kinds.count("complete") == 1
        assert events[-1].generation.status is GenerationStatus.COMPLETED
    else:
        assert "complete" not in kinds


# -- Retry-After ---------------------------------------------------------------------------

NOW = 1_700_000_000.0


@SETTINGS
@given(value=st.text(max_size=40), cap=st.floats(0, 1e6), now=st.floats(0, 4e9))
@example(value="1" * 400, cap=60.0, now=NOW)
@example(value="Fri, 31 Dec 9999 23:59:59 GMT", cap=60.0, now=NOW)
@example(value="Mon, 01 Jan 0001 00:00:00 GMT", cap=60.0, now=NOW)
@example(value="-1", cap=60.0, now=NOW)
@example(value="\u0661\u0662", cap=60.0, now=NOW)  # Arabic-Indic digits
def test_any_retry_after_text_gives_none_or_a_wait_within_zero_and_the_cap(value, cap, now):
    wait = parse_retry_after(value, now=now, cap=cap)
    assert wait is None or 0.0 <= wait <= cap


@SETTINGS
@given(seconds=st.integers(0, 10**30), cap=st.floats(0, 1e6))
def test_delta_seconds_are_obeyed_up_to_the_cap(seconds, cap):
    assert parse_retry_after(str(seconds), now=NOW, cap=cap) == min(cap, float(seconds))


@SETTINGS
@given(
    # Naive bounds, as hypothesis wants; the values are made UTC below.
    when=st.datetimes(
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    ),
    cap=st.floats(0, 1e6),
)
def test_http_dates_wait_until_then_clamped_to_zero_and_the_cap(when, cap):
    moment = when.replace(microsecond=0, tzinfo=timezone.utc)
    header = format_datetime(moment, usegmt=True)
    wait = parse_retry_after(header, now=NOW, cap=cap)
    assert wait == pytest.approx(min(cap, max(0.0, moment.timestamp() - NOW)))


# -- JSON to values -------------------------------------------------------------------------

GENERATION = {
    "id": "gen_1",
    "processingStatus": "completed",
    "outputImageUrls": ["https://cdn/1.png"],
}
GENERATION_FIELDS = {
    "id",
    "processingStatus",
    "outputImageUrls",
    "prompt",
    "modelUsed",
    "creditsUsed",
    "remainingCredits",
    "createdAt",
    "errorMessage",
}
MODEL = {"name": "nano-banana", "creditsCost": 1}
MODEL_FIELDS = {
    "name",
    "displayName",
    "creditsCost",
    "supportsImageInput",
    "supportsAspectRatio",
    "requiresPro",
}
SYNC = {"success": True, "generationId": "gen_1", "imageUrls": ["https://cdn/1.png"]}
SYNC_FIELDS = {"success", "generationId", "imageUrls", "creditsUsed", "remainingCredits"}


def extras(known: set[str]):
    return st.dictionaries(
        st.text(max_size=12).filter(lambda k: k not in known), json_values, max_size=6
    )


@SETTINGS
@given(extra=extras(GENERATION_FIELDS))
def test_unknown_fields_never_change_a_parsed_generation(extra):
    assert Generation.from_json({**GENERATION, **extra}) == Generation.from_json(GENERATION)


@SETTINGS
@given(extra=extras(MODEL_FIELDS))
def test_unknown_fields_never_change_a_parsed_model(extra):
    assert Model.from_json({**MODEL, **extra}) == Model.from_json(MODEL)


@SETTINGS
@given(extra=extras(SYNC_FIELDS))
def test_unknown_fields_never_change_a_parsed_sync_answer(extra):
    parsed = Generation.from_sync_json({**SYNC, **extra}, prompt="p", model=None)
    assert parsed == Generation.from_sync_json(SYNC, prompt="p", model=None)


@pytest.mark.parametrize(
    ("parse", "valid", "required"),
    [
        (Generation.from_json, GENERATION, ["id", "processingStatus"]),
        (Model.from_json, MODEL, ["name", "creditsCost"]),
        (lambda d: Generation.from_sync_json(d, prompt="p", model=None), SYNC, ["generationId"]),
    ],
)
@SETTINGS
@given(extra=extras(GENERATION_FIELDS | MODEL_FIELDS | SYNC_FIELDS), data=st.data())
def test_a_missing_or_null_required_field_is_named(parse, valid, required, extra, data):
    field = data.draw(st.sampled_from(required))
    body = {**valid, **extra}
    if data.draw(st.booleans()):
        del body[field]
    else:
        body[field] = None
    with pytest.raises(UnexpectedResponseError) as info:
        parse(body)
    assert info.value.field == field
    assert repr(field) in str(info.value)


@SETTINGS
@given(value=json_values)
@example(value={"id": "g", "processingStatus": "completed", "creditsUsed": math.inf})
@example(value={"name": "m", "creditsCost": math.nan})
def test_any_json_at_all_is_a_value_or_an_unexpected_response(value):
    parsers = (
        Generation.from_json,
        Model.from_json,
        lambda v: Generation.from_sync_json(v, prompt="p", model=None),
    )
    for parse in parsers:
        outcome = _value_or_error(parse, value)
        assert isinstance(outcome, (Generation, Model, UnexpectedResponseError)), outcome
        if isinstance(outcome, UnexpectedResponseError):
            assert outcome.field is not None


def _value_or_error(parse, value):
    try:
        return parse(value)
    except UnexpectedResponseError as exc:
        return exc


@SETTINGS
@given(
    body=json_values,
    call=st.sampled_from(["models", "credits", "get_generation", "generate", "submit"]),
)
@example(body={"data": {"credits": math.inf}}, call="credits")
def test_any_json_answer_to_any_call_is_a_value_or_one_of_our_errors(body, call):
    text = json.dumps(body, allow_nan=True)
    assume(len(text) < 5000)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=text.encode(), headers={"content-type": "application/json"}
        )

    calls = {
        "models": lambda c: c.models(),
        "credits": lambda c: c.credits(),
        "get_generation": lambda c: c.get_generation("gen_1"),
        "generate": lambda c: c.generate("p"),
        "submit": lambda c: c.submit("p"),
    }

    async def go():
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncNanoBanana(
            api_key="nb_property_key", base_url=API, http_client=http
        ) as client:
            try:
                return await calls[call](client)
            except NanoBananaError as exc:
                return exc
            finally:
                await http.aclose()

    outcome = asyncio.run(go())
    if isinstance(outcome, UnexpectedResponseError) and call in ("generate", "submit"):
        assert outcome.may_have_been_charged  # a 2xx to POST /generate was accepted
    assert not isinstance(outcome, BaseException) or isinstance(outcome, NanoBananaError)
