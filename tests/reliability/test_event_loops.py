"""Event-loop hygiene: one client per loop, said clearly; unclosed clients warn, never crash.

A client's connections belong to the event loop that first used it. Using it from
another loop (a second `asyncio.run()`, a thread's loop, trio) must fail at once with
our message, not with "Event loop is closed" from deep in the transport, and must
send nothing. A client that is never closed warns (`ResourceWarning`) when collected,
and a program that exits with one open exits cleanly.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import warnings

import httpx
import pytest
import trio
from reliability_support import drain, fast_client

from nanobanana import AsyncNanoBanana, NanoBananaError
from nanobanana.testing import Simulator

CLEAR = "first used in another event loop"


@pytest.fixture
def sim():
    with Simulator(seed=11, concurrency_limit=4, stream_event_ids=True) as s:
        yield s


def every_call(client, generation, tmp_path):
    """One coroutine per kind of call (made lazily, inside the loop that awaits it)."""
    return {
        "models": client.models,
        "credits": client.credits,
        "generate": lambda: client.generate("p"),
        "stream": lambda: drain(client.stream("p")),
        "submit": lambda: client.submit("p"),
        "get_generation": lambda: client.get_generation(generation.id),
        "wait": lambda: client.job(generation.id).wait(timeout=5),
        "download": lambda: client.download(generation, tmp_path),
    }


async def _expect_clear_errors(calls) -> dict[str, str]:
    messages = {}
    for name, call in calls.items():
        with pytest.raises(NanoBananaError, match=CLEAR) as info:
            await call()
        messages[name] = str(info.value)
    return messages


def test_a_second_asyncio_run_fails_clearly_for_every_call_and_sends_nothing(sim, tmp_path):
    client = fast_client(sim)
    generation = asyncio.run(client.generate("first loop"))
    sent = len(sim.requests)
    messages = asyncio.run(_expect_clear_errors(every_call(client, generation, tmp_path)))
    assert len(messages) == 8
    assert not any("Event loop is closed" in m for m in messages.values())
    assert len(sim.requests) == sent
    assert list(tmp_path.iterdir()) == []
    asyncio.run(client.aclose())  # closing is the one thing another loop may do


def test_a_trio_run_after_asyncio_fails_clearly_and_sends_nothing(sim, tmp_path):
    client = fast_client(sim)
    generation = asyncio.run(client.generate("first loop"))
    sent = len(sim.requests)
    messages = trio.run(_expect_clear_errors, every_call(client, generation, tmp_path))
    assert len(messages) == 8
    assert len(sim.requests) == sent
    asyncio.run(client.aclose())  # closing is the one thing another loop may do


async def test_a_loop_in_another_thread_fails_clearly_while_the_first_still_runs(sim, tmp_path):
    async with fast_client(sim) as client:
        generation = await client.generate("first loop")
        sent = len(sim.requests)
        calls = every_call(client, generation, tmp_path)
        messages = await asyncio.to_thread(asyncio.run, _expect_clear_errors(calls))
        assert len(messages) == 8
        assert len(sim.requests) == sent
        # The first loop goes on using it.
        assert await client.credits() == 99


def test_a_client_whose_loop_has_ended_can_be_closed_from_a_later_loop(sim):
    client = fast_client(sim)
    asyncio.run(client.credits())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        asyncio.run(client.aclose())
        assert client.is_closed
        del client
        gc.collect()


def _drop_and_collect(holder: list[AsyncNanoBanana]) -> None:
    holder.clear()  # the last reference
    gc.collect()


def test_an_unclosed_client_warns_when_collected(sim):
    holder = [fast_client(sim)]
    asyncio.run(holder[0].credits())
    # Its idle connection warns too ("unclosed transport", asyncio's own warning).
    with pytest.warns(ResourceWarning) as caught:
        _drop_and_collect(holder)
    ours = [w for w in caught if "was never closed" in str(w.message)]
    assert len(ours) == 1
    assert "async with AsyncNanoBanana()" in str(ours[0].message)
    assert sim.api_key not in str(ours[0].message)


def test_an_unused_unclosed_client_warns_too():
    holder = [AsyncNanoBanana(api_key="nb_unused_key_123")]
    with pytest.warns(ResourceWarning, match="was never closed"):
        _drop_and_collect(holder)


def test_a_client_on_a_borrowed_http_client_does_not_warn():
    http = httpx.AsyncClient()
    client = AsyncNanoBanana(api_key="nb_borrowed_key_123", http_client=http)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    asyncio.run(http.aclose())


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from nanobanana import AsyncNanoBanana

    base_url, key, runner = sys.argv[1:]
    client = AsyncNanoBanana(api_key=key, base_url=base_url)

    async def main():
        await client.generate("left open")
        job = await client.submit("a job left running")
        async for event in client.stream("a stream abandoned"):
            break
        return job

    if runner == "trio":
        import trio
        job = trio.run(main)
    else:
        import asyncio
        job = asyncio.run(main())
    print("exiting with", job.id)
    """
)


@pytest.mark.parametrize("runner", ["asyncio", "trio"])
def test_a_program_that_exits_with_an_open_client_exits_cleanly(sim, tmp_path, runner):
    script = tmp_path / "left_open.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-W", "default", str(script), sim.base_url, sim.api_key, runner],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("exiting with ")
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
    assert "Event loop is closed" not in done.stderr
    # It says what was left open, as asyncio and httpx do.
    assert "was never closed" in done.stderr
    assert sim.api_key not in done.stderr
