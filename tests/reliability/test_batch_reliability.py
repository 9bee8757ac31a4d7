"""Batches stopped at the worst moments: cancelled, abandoned, killed with SIGKILL.

Whatever stops a batch, the journal stays true: every generation that was paid for
is either recorded with its id (and a later run polls and downloads it) or reported
as ``maybe_charged`` (when no answer came back); nothing is paid for twice; and no
task, governor slot, connection or partial file is left behind.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import anyio
import pytest
import trio
from reliability_support import LoopErrors, assert_no_leaks, fast_client, pool_state, stray_files

from nanobanana import APIConnectionError
from nanobanana._download import safe_stem
from nanobanana.testing import Simulator

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sim():
    with Simulator(credits=1000, seed=3, concurrency_limit=3, max_async_tasks=500) as s:
        yield s


def net_credits(sim) -> int:
    return sum(e.amount if e.kind == "charge" else -e.amount for e in sim.ledger)


def last_records(journal: Path) -> dict[str, dict]:
    """The last record of each key; every line must be whole JSON."""
    last: dict[str, dict] = {}
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        last[record["key"]] = record
    return last


async def collect(batch) -> list:
    async with batch as results:
        return [result async for result in results]


async def nothing_left(sim, client) -> None:
    """No slot, no connection held: a connection cut mid-answer goes back to the pool
    once the server has closed its end too (a moment later), so wait for that first."""
    await sim.wait_for_async(lambda: pool_state(client).checked_out == 0, timeout=5)
    assert_no_leaks(client)


async def cancelled_when(sim, predicate, run) -> None:
    """Run ``run()`` in a task and cancel it as soon as ``predicate()`` holds."""
    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await sim.wait_for_async(predicate, timeout=20)
        group.cancel_scope.cancel()


def processing(sim) -> int:
    return sum(g.status == "processing" for g in sim.generations)


async def test_cancelled_while_polling_every_id_is_recorded_and_resumed(sim, tmp_path):
    journal = tmp_path / "j.jsonl"
    prompts = [f"prompt {n}" for n in range(10)]
    errors = LoopErrors().install()
    try:
        async with fast_client(sim, max_concurrency=3) as client:
            with sim.hold():

                async def run():
                    await collect(client.batch(prompts, journal=journal))

                await cancelled_when(sim, lambda: processing(sim) == 10, run)
            await nothing_left(sim, client)
            assert {r["status"] for r in last_records(journal).values()} == {"submitted"}
            resumed = await collect(client.batch(prompts, journal=journal))
    finally:
        errors.uninstall()
    assert errors.messages() == []
    assert all(r.ok for r in resumed)
    assert net_credits(sim) == 10


async def test_cancelled_while_downloading_leaves_no_partial_file_and_resumes(sim, tmp_path):
    journal = tmp_path / "j.jsonl"
    images = tmp_path / "images"
    prompts = [f"prompt {n}" for n in range(4)]
    sim.inject("delay", seconds=30, origin="cdn", times=None)
    async with fast_client(sim, max_concurrency=3) as client:

        async def run():
            await collect(client.batch(prompts, journal=journal, download_dir=images))

        def downloading() -> bool:  # generated, polled, and the images on their way
            done = len(sim.generations) == 4 and all(
                g.status == "completed" for g in sim.generations
            )
            return done and sim.in_flight() == 0 and journal.exists()

        await cancelled_when(sim, downloading, run)
        await nothing_left(sim, client)
        assert stray_files(tmp_path) == []
        assert {r["status"] for r in last_records(journal).values()} == {"submitted"}
        sim.clear_faults()
        resumed = await collect(client.batch(prompts, journal=journal, download_dir=images))
    assert [len(r.files) for r in resumed] == [1, 1, 1, 1]
    assert net_credits(sim) == 4  # downloaded, not generated again
    assert stray_files(tmp_path) == []


async def test_a_stop_waits_for_the_answer_to_a_submission_already_sent(sim, tmp_path):
    journal = tmp_path / "j.jsonl"
    sim.inject("delay", seconds=0.3, method="POST", path="/generate", times=1)
    async with fast_client(sim, max_concurrency=3) as client:
        with sim.hold():

            async def run():
                await collect(client.batch(["a banana"], journal=journal))

            def at_the_server() -> bool:  # sent (the journal says so), not yet accepted
                return journal.exists() and "sending" in journal.read_text() and not sim.generations

            # Cancelled while its POST is at the server and no answer has come back.
            await cancelled_when(sim, at_the_server, run)
        await nothing_left(sim, client)
        [record] = last_records(journal).values()
        [generation] = sim.generations
        assert (record["status"], record["generation_id"]) == ("submitted", generation.id)
        [resumed] = await collect(client.batch(["a banana"], journal=journal))
    assert resumed.generation_id == generation.id
    assert net_credits(sim) == 1


async def test_a_sync_request_cut_by_a_stop_is_maybe_charged_and_not_sent_again(sim, tmp_path):
    journal = tmp_path / "j.jsonl"
    prompts = ["first", "second", "third"]
    async with fast_client(sim, max_concurrency=1) as client:
        with sim.hold():

            async def run():
                await collect(client.batch(prompts, mode="sync", journal=journal))

            await cancelled_when(sim, lambda: sim.in_flight() == 1, run)
        await nothing_left(sim, client)
        # Only the first was sent; the others waited for the one slot.
        assert {r["status"] for r in last_records(journal).values()} == {"sending"}
        assert net_credits(sim) == 1

        again = {r.index: r for r in await collect(client.batch(prompts, journal=journal))}
        assert again[0].status == "maybe_charged"
        assert again[0].from_journal
        assert isinstance(again[0].error, APIConnectionError)
        assert again[0].error.may_have_been_charged
        assert again[1].ok
        assert again[2].ok
        assert net_credits(sim) == 3  # the first was not paid for twice

        retried = await collect(client.batch(prompts, journal=journal, retry_failed=True))
    assert [r.status for r in retried if r.index == 0] == ["completed"]
    assert net_credits(sim) == 4  # asked for: paid again


async def test_items_waiting_for_a_slot_stop_at_once_and_leave_no_record(sim, tmp_path):
    journal = tmp_path / "j.jsonl"
    prompts = [f"prompt {n}" for n in range(6)]
    async with fast_client(sim, max_concurrency=1) as client:
        with sim.hold():
            async with client.batch(prompts, mode="sync", journal=journal) as results:
                await sim.wait_for_async(lambda: sim.in_flight() == 1, timeout=20)
                assert results.stats().running == 6
                assert results.stats().awaiting_id == 1
            assert results.stats().awaiting_id == 1  # the one that may have been charged
        await nothing_left(sim, client)
    assert len(last_records(journal)) == 1
    assert len(sim.generations) == 1


async def test_a_plain_loop_left_early_breaks_nothing_around_it(sim, tmp_path):
    errors = LoopErrors().install()
    try:
        async with fast_client(sim, max_concurrency=3) as client:
            batch = client.batch([f"prompt {n}" for n in range(40)], download_dir=tmp_path)
            with anyio.CancelScope() as outer:
                async for _ in batch:
                    break
                # The caller's own cancel scopes still nest as they should.
                with anyio.move_on_after(5):
                    await anyio.lowlevel.checkpoint()
            assert not outer.cancel_called
            gc.collect()  # the loop's iterator goes; its finalizer stops the batch
            await batch.aclose()  # and this waits for that
            assert batch.stats().running == 0
            await nothing_left(sim, client)
    finally:
        errors.uninstall()
    assert errors.messages() == []
    assert stray_files(tmp_path) == []


def test_a_batch_runs_on_trio_too(sim, tmp_path):
    async def main():
        async with fast_client(sim, max_concurrency=3) as client:
            results = await collect(
                client.batch(
                    [f"prompt {n}" for n in range(6)],
                    download_dir=tmp_path / "images",
                    journal=tmp_path / "j.jsonl",
                )
            )
            with sim.hold():
                async with client.batch(["held"], journal=tmp_path / "j2.jsonl") as held:
                    await sim.wait_for_async(lambda: processing(sim) == 1)
            return results, held.unfinished_ids()

    results, unfinished = trio.run(main)
    assert sorted(r.index for r in results) == list(range(6))
    assert all(r.ok and len(r.files) == 1 for r in results)
    assert len(unfinished) == 1


# -- kill -9 ---------------------------------------------------------------------------

BATCH_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from nanobanana import AsyncNanoBanana, PollPolicy

    count, journal, images = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def prompts():
        for n in range(count):
            yield f"prompt number {n}"
            await asyncio.sleep(0.02)  # items arrive over time, as from a queue

    async def main():
        polls = PollPolicy(first_delay=0.02, max_interval=0.05, jitter=0.0)
        async with AsyncNanoBanana(poll_policy=polls, max_concurrency=3) as client:
            batch = client.batch(prompts(), journal=journal, download_dir=images)
            async with batch as results:
                async for r in results:
                    line = {"index": r.index, "status": r.status, "id": r.generation_id,
                            "files": [str(f) for f in r.files], "from_journal": r.from_journal}
                    print(json.dumps(line), flush=True)

    asyncio.run(main())
    """
)


def test_a_batch_killed_with_sigkill_resumes_paying_for_nothing_twice(tmp_path):
    count = 24
    script = tmp_path / "run_batch.py"
    script.write_text(BATCH_SCRIPT)
    journal = tmp_path / "batch.jsonl"
    images = tmp_path / "images"
    with Simulator(
        credits=1000, seed=11, concurrency_limit=3, max_async_tasks=500, generation_time=0.05
    ) as sim:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NANOBANANA", "NB_"))},
            "NANOBANANA_BASE_URL": sim.base_url,
            "NANOBANANA_API_KEY": sim.api_key,
        }
        argv = [sys.executable, str(script), str(count), str(journal), str(images)]

        def last() -> dict[str, dict]:
            return last_records(journal) if journal.exists() else {}

        def charged_ids() -> set[str]:
            refunded = {e.generation_id for e in sim.ledger if e.kind == "refund"}
            return {e.generation_id for e in sim.ledger if e.kind == "charge"} - refunded

        def every_item_has_its_id_on_disk() -> bool:
            records = last()
            ids = {r.get("generation_id") for r in records.values()}
            return len(records) == count and None not in ids and charged_ids() <= ids

        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)  # noqa: S603
        try:
            sim.wait_for(
                lambda: Counter(r["status"] for r in last().values())["completed"] >= 5,
                timeout=30,
            )
            with sim.hold():
                # From now on every generation stays processing. Once each item has
                # sent its request and recorded the id, no request is in flight: the
                # kill cannot land between a charge and its record.
                sim.wait_for(every_item_has_its_id_on_disk, timeout=30)
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
        assert process.returncode == -signal.SIGKILL
        before = Counter(r["status"] for r in last().values())
        assert before["completed"] >= 5
        assert before["submitted"] >= 5  # killed with generations paid for and running

        resumed = subprocess.run(  # noqa: S603
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert resumed.returncode == 0, resumed.stderr
        lines = [json.loads(line) for line in resumed.stdout.splitlines()]
        assert sorted(line["index"] for line in lines) == list(range(count))
        assert {line["status"] for line in lines} == {"completed"}
        assert sum(line["from_journal"] for line in lines) == before["completed"]

        charged = charged_ids()
        assert len(charged) == count  # every prompt paid for once, none twice
        assert {g.prompt for g in sim.generations if g.id in charged} == {
            f"prompt number {n}" for n in range(count)
        }
        for generation_id in charged:  # and every paid image is on disk
            [image] = images.glob(f"{safe_stem(generation_id)}-0.*")
            assert image.read_bytes().startswith(PNG)
