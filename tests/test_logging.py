"""Log records with structured fields: countable as JSON without parsing messages."""

import io
import json
import logging
import re
from pathlib import Path

import httpx
import pytest
import respx

from nanobanana import FakeClock, InternalServerError, PollPolicy
from nanobanana._admission._tasks import LocalLedger, TaskGate
from nanobanana._logs import LOG_FIELDS
from nanobanana._responses import StreamContext
from nanobanana.fleet import RedisGovernor
from nanobanana.testing import Simulator
from redis_support import RedisServer, free_port
from support import API, KEY


class JSONFormatter(logging.Formatter):
    """What a user who ships logs as JSON writes: every field of the record, as JSON."""

    def format(self, record: logging.LogRecord) -> str:
        document = {"level": record.levelname, "message": record.getMessage()}
        standard = logging.makeLogRecord({}).__dict__.keys()
        document.update({k: v for k, v in record.__dict__.items() if k not in standard})
        return json.dumps(document, default=str)


@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("nanobanana")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def lines(level=logging.DEBUG):
        found = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [doc for doc in found if logging.getLevelName(doc["level"]) >= level]

    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    assert KEY not in stream.getvalue()


async def test_a_json_handler_counts_429s_by_field_against_the_simulator(json_log):
    clock = FakeClock()
    with Simulator(retry_after="2") as sim:
        sim.inject("429", path="/generate", times=3)
        async with sim.client(clock=clock) as client:
            generation = await client.generate("a banana")
        assert sim.api_key not in json.dumps(json_log())
    # Production logging is at INFO: the 429s and the retries show there, without regex.
    records = json_log(logging.INFO)
    assert sum(1 for r in records if r["status"] == 429) == 3
    retries = [r for r in records if r["event"] == "retry"]
    assert [(r["reason"], r["wait"], r["attempt"]) for r in retries] == [
        ("429", 2.0, 1),
        ("429", 2.0, 2),
        ("429", 2.0, 3),
    ]
    assert all((r["method"], r["path"]) == ("POST", "/generate") for r in records)
    # At DEBUG, the success too, with the generation it created.
    (done,) = [r for r in json_log() if r["status"] == 200]
    assert (done["event"], done["attempt"], done["generation_id"]) == ("response", 4, generation.id)
    assert done["may_have_been_charged"] is False
    assert done["level"] == "DEBUG"


@respx.mock
async def test_every_record_has_every_field(client, json_log):
    respx.get(f"{API}/credits").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, json={"data": {"credits": 1}}),
        ]
    )
    await client.credits()
    records = json_log()
    assert [r["event"] for r in records] == ["error", "retry", "response"]
    for record in records:
        assert set(LOG_FIELDS) <= record.keys()
    error, retry, _ = records
    assert (error["error"], error["may_have_been_charged"], error["status"]) == (
        "ConnectError",
        False,
        None,
    )
    assert (retry["reason"], retry["status"]) == ("connect", None)


@respx.mock
async def test_an_ambiguous_answer_says_it_may_have_been_charged(client, json_log):
    respx.post(f"{API}/generate").respond(500, json={"error": "boom", "generationId": "gen_500"})
    with pytest.raises(InternalServerError):
        await client.generate("x")
    (record,) = json_log(logging.INFO)
    assert (record["status"], record["may_have_been_charged"]) == (500, True)
    assert record["level"] == "INFO"


@respx.mock
async def test_polls_name_their_generation(client, json_log):
    respx.get(f"{API}/generate", params={"id": "gen_7"}).mock(
        side_effect=[
            httpx.Response(500, json={"error": "down"}),  # (a 503 would be waited out)
            httpx.Response(
                200,
                json={
                    "data": {
                        "id": "gen_7",
                        "processingStatus": "completed",
                        "outputImageUrls": ["https://cdn.test/1.png"],
                    }
                },
            ),
        ]
    )
    once = client.with_options(max_retries=0, poll_policy=PollPolicy(first_delay=0, jitter=0))
    await once.job("gen_7").wait()
    records = json_log()
    assert [(r["event"], r["status"]) for r in records] == [
        ("response", 500),
        ("poll_failed", None),  # no status: that 500 is counted once
        ("response", 200),
    ]
    assert {r["generation_id"] for r in records} == {"gen_7"}
    assert records[1]["error"] == "InternalServerError"


@pytest.mark.parametrize("echoed", [KEY, f"gen_{KEY}_1"])
@respx.mock
async def test_a_key_echoed_by_the_server_is_never_logged(client, json_log, echoed):
    answer = {"success": True, "generationId": echoed, "imageUrls": ["https://cdn.test/1.png"]}
    respx.post(f"{API}/generate").respond(json=answer)
    await client.generate("x")
    (record,) = json_log()
    assert record["generation_id"] is None
    # (json_log's teardown checks that the key is nowhere in the output.)


# -- every record of the library carries every documented field ---------------------------

DOCS = Path(__file__).parent.parent / "docs" / "production.md"


def documented_fields():
    """The field names in the first column of docs/production.md's table of log fields."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Structured log records", 1)[1]
    table = section[section.index("| field |") :].split("\n\n", 1)[0]  # the first table
    rows = table.splitlines()[2:]
    return [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]


def test_the_documented_fields_are_the_fields_of_every_record():
    assert documented_fields() == list(LOG_FIELDS)


class StrictHandler(logging.Handler):
    """A handler whose formatter names every documented field, as docs/production.md shows."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        fmt = " ".join(f"{name}=%({name})s" for name in documented_fields())
        self.setFormatter(logging.Formatter(f"%(levelname)s %(name)s {fmt} %(message)s"))
        self.lines = []
        self.failures = []

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # the failure is what the test looks for
            self.failures.append(f"{record.getMessage()!r}: {exc!r}")

    def events(self):
        return [re.search(r"event=(\S+)", line)[1] for line in self.lines]


@pytest.fixture
def strict_log():
    handler = StrictHandler()
    logger = logging.getLogger("nanobanana")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    assert handler.failures == []
    assert KEY not in "\n".join(handler.lines)


def event_stream(request):
    """A stream that completes at once (POST); a 500 to the GET that completes its result."""
    if request.method == "GET":
        return httpx.Response(500, json={"error": "down"})
    data = {"success": True, "generationId": "gen_s", "imageUrls": ["https://cdn.test/1"]}
    event = {"type": "complete", "progress": 100, "data": data}
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, text=f"data: {json.dumps(event)}\n\n"
    )


@respx.mock
async def test_stream_records_carry_every_field(client, strict_log, monkeypatch):
    respx.route().mock(side_effect=event_stream)
    events = [event async for event in client.stream("x")]
    assert events[-1].generation.id == "gen_s"
    assert strict_log.events() == ["response", "response", "stream_result_unused"]

    async def close_fails(self):
        raise RuntimeError("the close failed")

    # (No response fails to close by itself: httpx gives up a connection it cannot close.)
    monkeypatch.setattr(StreamContext, "aclose_response", close_fails)
    strict_log.lines.clear()
    events = [event async for event in client.stream("x")]
    assert events[-1].generation.id == "gen_s"
    assert strict_log.events() == ["response", "stream_close_failed"]
    assert client.governor_stats().active == 0


async def test_async_task_records_carry_every_field(strict_log):
    clock = FakeClock()
    polls = []

    async def poll(generation_id):
        polls.append(generation_id)
        if len(polls) == 1:
            raise InternalServerError.__new__(InternalServerError)
        await tasks.seen(generation_id, finished=True)

    tasks = TaskGate(LocalLedger(clock=clock, lease=60.0), clock=clock)
    await tasks.ledger.busy("none", 1)  # the cap is 1
    await tasks.wait_room("r0", poll)
    await tasks.start("r0", "gen_0")
    await tasks.wait_room("r1", poll)  # polls gen_0 for room: fails once, then it is done
    await tasks.start("r1", "gen_1")
    clock.advance(61)  # nobody polls gen_1 within its lease
    assert tasks.ledger.count() == 0
    assert strict_log.events() == ["room_poll_failed", "task_expired"]
    assert all("generation_id=gen_" in line for line in strict_log.lines)


async def test_redis_link_records_carry_every_field(strict_log):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with Simulator() as sim:
        governor = RedisGovernor(url, timeout=0.5, retry_interval=60)
        async with sim.client(governor=governor) as client:
            await client.generate("x")
            assert client.governor_stats().shared is False
        assert sim.api_key not in "\n".join(strict_log.lines)
    assert [e for e in strict_log.events() if e.startswith("redis")] == ["redis_down"]
    (down,) = [line for line in strict_log.lines if "event=redis_down" in line]
    assert "error=ConnectionError" in down


def test_a_redis_governor_under_trio_logs_every_field(strict_log):
    trio = pytest.importorskip("trio")
    url = f"redis://127.0.0.1:{free_port()}/0"  # (never connected to: trio stays local)

    async def main(sim):
        async with sim.client(governor=url) as client:
            await client.credits()

    with Simulator() as sim:
        trio.run(main, sim)
    assert "redis_unsupported" in strict_log.events()


async def test_the_redis_governor_answering_again_is_logged_with_every_field(strict_log):
    server = RedisServer()  # its port, not listening yet
    clock = FakeClock()
    with Simulator() as sim:
        governor = RedisGovernor(server.url, timeout=0.5, retry_interval=1.0)
        async with sim.client(governor=governor, clock=clock) as client:
            await client.credits()
            server.start()
            try:
                clock.advance(2.0)  # past retry_interval: the next call tries Redis again
                await client.credits()
                assert client.governor_stats().shared is True
            finally:
                server.stop()
    assert [e for e in strict_log.events() if e.startswith("redis")] == [
        "redis_down",
        "redis_up",
    ]
