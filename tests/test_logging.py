"""Log records with structured fields: countable as JSON without parsing messages."""

import io
import json
import logging

import httpx
import pytest
import respx

from nanobanana import FakeClock, InternalServerError, PollPolicy
from nanobanana._stats import LOG_FIELDS
from nanobanana.testing import Simulator
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
