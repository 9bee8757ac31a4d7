"""Cancellation storm: hundreds of calls cancelled at random moments, round after round.

Calls of every kind (sync generate, stream, submit + wait, download) are cancelled
with `task.cancel()`, `asyncio.timeout` and anyio cancel scopes, at seeded random
moments: while queued in the governor, connecting, waiting for an answer, reading a
stream or an image, or sleeping between polls. After each round: no connection
checked out, no governor slot held, no partial file, nothing the event loop had to
report, and the same client serves every kind of call again.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import random
import sys
from pathlib import Path

import anyio
import pytest
from reliability_support import LoopErrors, assert_no_leaks, drain, fast_client, stray_files

from nanobanana import Generation, GenerationStatus, NanoBananaError
from nanobanana._download import image_extension
from nanobanana.testing import Fault, Simulator

SEED = 1337
ROUNDS = 3
TASKS_PER_ROUND = 200
KINDS = ("generate", "stream", "wait", "download")
METHODS = ("task.cancel", "asyncio.timeout", "move_on_after", "cancel_scope")
BIG_IMAGE = 4 * 1024 * 1024


@pytest.fixture
def sim():
    with Simulator(
        seed=SEED,
        credits=1_000_000,
        concurrency_limit=4,
        retry_after="0",
        busy_retry_after="0",
        max_async_tasks=10_000,
        stream_event_ids=True,
        heartbeat_interval=0.01,
    ) as s:
        yield s


async def _run_one(method: str, delay: float, work) -> str:
    """Run `work()` under `method`, cancelled after `delay` s; say how it ended."""
    loop = asyncio.get_running_loop()
    if method == "task.cancel":
        task = asyncio.ensure_future(work())
        handle = loop.call_later(delay, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        finally:
            handle.cancel()
        return "done"
    if method == "asyncio.timeout":
        try:
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(delay):
                    await work()
            else:  # pragma: no cover - Python 3.10
                await asyncio.wait_for(work(), delay)
        except TimeoutError:
            return "cancelled"
        return "done"
    if method == "move_on_after":
        with anyio.move_on_after(delay) as scope:
            await work()
        return "cancelled" if scope.cancelled_caught else "done"
    with anyio.CancelScope() as scope:
        handle = loop.call_later(delay, scope.cancel)
        try:
            await work()
        finally:
            handle.cancel()
    return "cancelled" if scope.cancelled_caught else "done"


def _check_images(dest: Path, sizes: dict[str, int]) -> None:
    """Only whole images under their final names: no temp file, no partial body."""
    assert stray_files(dest) == []
    for path in dest.iterdir():
        data = path.read_bytes()
        assert image_extension(data[:16]) == "png", path.name
        assert len(data) == sizes[path.name], path.name


async def test_rounds_of_random_cancellations_leak_nothing_and_the_client_keeps_working(
    sim, tmp_path
):
    rng = random.Random(SEED)
    dest = tmp_path / "images"
    errors = LoopErrors().install()
    try:
        async with fast_client(sim, seed=SEED) as client:
            # Images to download: small ones, and 4 MB ones so that cancellations land
            # in the middle of a body.
            small = await client.generate("storm small", quantity=2)
            big = await client.generate("storm big", quantity=2)
            sim.inject(Fault(kind="cdn_huge", size=BIG_IMAGE, path=f"/img/{big.id}", times=None))
            reference = tmp_path / "reference"
            sizes = {
                p.name: p.stat().st_size
                for g in (small, big)
                for p in await client.download(g, reference)
            }
            assert max(sizes.values()) == BIG_IMAGE

            def work_for(kind: str, prompt: str):
                async def generate() -> Generation:
                    return await client.generate(prompt)

                async def stream() -> None:
                    events = await drain(client.stream(prompt))
                    assert events[-1].type == "complete"

                async def wait() -> None:
                    job = await client.submit(prompt)
                    await job.wait(timeout=10)

                async def download() -> None:
                    await client.download(rng.choice((small, big)), dest)

                return {"generate": generate, "stream": stream, "wait": wait, "download": download}[
                    kind
                ]

            tally: collections.Counter[tuple[str, str]] = collections.Counter()
            for round_ in range(ROUNDS):
                runs = []
                for i in range(TASKS_PER_ROUND):
                    kind = rng.choice(KINDS)
                    method = rng.choice(METHODS)
                    slow = rng.choice((0.0, 0.02, 0.05, 0.1, 0.2))
                    prompt = f"storm r{round_} t{i} [slow={slow}]"
                    # Mostly soon (queued, connecting, mid-answer), some late enough
                    # for the call to finish first.
                    delay = rng.uniform(0.0, 0.1) if rng.random() < 0.75 else rng.uniform(0.1, 0.6)
                    runs.append((kind, _run_one(method, delay, work_for(kind, prompt))))
                results = await asyncio.gather(*(r for _, r in runs), return_exceptions=True)
                for (kind, _), result in zip(runs, results, strict=True):
                    if isinstance(result, BaseException):
                        # A typed error is a possible end (e.g. 429s while the server
                        # has not yet seen a cancelled request go); nothing else is.
                        assert isinstance(result, NanoBananaError), repr(result)
                        tally[kind, type(result).__name__] += 1
                    else:
                        tally[kind, result] += 1

                assert_no_leaks(client)
                _check_images(dest, sizes)
                await sim.wait_for_async(lambda: sim.in_flight() == 0, timeout=10)

                # The same client serves every kind of call after the storm.
                follow_up = await client.generate(f"after round {round_}")
                assert follow_up.status is GenerationStatus.COMPLETED
                events = await drain(client.stream(f"after round {round_} (stream)"))
                assert events[-1].generation.image_urls
                job = await client.submit(f"after round {round_} (async)")
                assert (await job.wait(timeout=10)).status is GenerationStatus.COMPLETED
                assert await client.download(follow_up, tmp_path / f"after-{round_}")
                assert_no_leaks(client)
    finally:
        gc.collect()
        errors.uninstall()
    assert errors.contexts == [], errors.messages()
    # The storm really cut calls of every kind, and let some of each finish.
    for kind in KINDS:
        assert tally[kind, "cancelled"] > 0, tally
        assert tally[kind, "done"] > 0, tally
