import asyncio

import anyio
import pytest

from nanobanana._pump import wait_uncancelled


async def test_waiting_for_a_close_sits_out_repeated_native_cancels_then_reraises():
    closed = anyio.Event()
    waiting = asyncio.Event()
    outcome = []

    async def leaving_consumer():
        try:
            await asyncio.sleep(3600)
        finally:
            waiting.set()
            try:
                await wait_uncancelled(closed, 10)
            finally:
                outcome.append(closed.is_set())

    task = asyncio.create_task(leaving_consumer())
    await asyncio.sleep(0)
    task.cancel()  # the consumer leaves...
    await waiting.wait()
    task.cancel()  # ... and is cancelled again, twice, while it waits for the close
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()
    closed.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == [True]


async def test_waiting_for_a_close_that_never_comes_ends_at_its_bound():
    never = anyio.Event()
    with anyio.fail_after(5):
        await wait_uncancelled(never, 0.01)
    assert not never.is_set()


def test_waiting_for_a_close_under_trio_is_shielded_from_its_cancel_scope():
    trio = pytest.importorskip("trio")

    async def main():
        closed = anyio.Event()

        async def close_soon():
            await trio.sleep(0.01)
            closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            with trio.CancelScope() as scope:
                scope.cancel()  # the consumer's scope: cancelled, as it leaves
                await wait_uncancelled(closed, 5)
                assert closed.is_set()

    trio.run(main)
