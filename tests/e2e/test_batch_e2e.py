"""`client.batch()` end to end, against the simulator over a socket.

The simulator's async-task cap is set high here: until the client admits submissions
under the server's cap itself, a batch wider than the cap meets 503s.
"""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from nanobanana import (
    APITimeoutError,
    AuthenticationError,
    BatchRequest,
    BudgetExceededError,
    ContentSafetyError,
    GenerationFailedError,
    InsufficientCreditsError,
    InternalServerError,
    JobTimeoutError,
    PollPolicy,
    RetryPolicy,
)
from nanobanana._batch._journal import Journal
from nanobanana.testing import Simulator

PNG = b"\x89PNG\r\n\x1a\n"
FAST_POLLS = PollPolicy(first_delay=0.01, growth=1.5, max_interval=0.02, jitter=0.0, timeout=20.0)
FAST_RETRIES = RetryPolicy(attempts=4, wait_initial=0.005, wait_max=0.02, retry_after_max=0.05)


@pytest.fixture
def sim():
    with Simulator(credits=1000, seed=7, concurrency_limit=3, max_async_tasks=500) as s:
        yield s


def client_of(sim, **kwargs):
    kwargs.setdefault("poll_policy", FAST_POLLS)
    kwargs.setdefault("retry_policy", FAST_RETRIES)
    kwargs.setdefault("max_concurrency", 3)
    return sim.client(**kwargs)


def charges(sim) -> int:
    """Credits spent, refunds deducted."""
    return sum(e.amount if e.kind == "charge" else -e.amount for e in sim.ledger)


def posts(sim) -> list:
    return [r for r in sim.requests if r.method == "POST" and r.path.endswith("/generate")]


async def collect(batch) -> list:
    async with batch as results:
        return [result async for result in results]


async def test_results_come_as_items_finish_each_with_its_index(sim, tmp_path):
    prompts = ["a slow banana [slow=10]", "a pear", "an apple", "a plum"]
    async with client_of(sim) as client, client.batch(prompts, download_dir=tmp_path) as results:
        first = []
        async for result in results:
            first.append(result)
            if len(first) == 3:
                break  # the slow one is still generating
    assert {r.index for r in first} == {1, 2, 3}
    for result in first:
        assert result.ok
        assert result.status == "completed"
        assert result.prompt == prompts[result.index]
        assert result.generation is not None
        assert result.generation_id == result.generation.id
        assert result.credits_used == 1
        [path] = result.files
        assert path.parent == tmp_path
        assert path.read_bytes().startswith(PNG)
        assert not result.from_journal


async def test_a_plain_async_for_runs_to_the_end_and_mixes_strings_and_requests(sim):
    items = [
        "a banana",
        BatchRequest(prompt="a moon", aspect_ratio="16:9", quantity=2),
        BatchRequest(prompt="a cat", model="nano-banana"),
    ]
    async with client_of(sim) as client:
        results = [r async for r in client.batch(items, aspect_ratio="1:1")]
    by_index = {r.index: r for r in results}
    assert sorted(by_index) == [0, 1, 2]
    assert len(by_index[1].generation.image_urls) == 2
    ratios = {g.prompt: g.aspect_ratio for g in sim.generations}
    assert ratios == {"a banana": "1:1", "a moon": "16:9", "a cat": "1:1"}  # defaults fill in
    assert charges(sim) == 4  # quantity 2 costs two


def counting(count: int):
    """Prompts, and how many were taken so far."""
    pulled = [0]

    def prompts():
        for n in range(count):
            pulled[0] += 1
            yield f"prompt {n}"

    return prompts(), pulled


async def test_the_input_is_read_lazily_a_window_at_a_time(sim):
    prompts, pulled = counting(100_000)
    async with client_of(sim) as client:
        with sim.hold():
            async with client.batch(prompts, mode="sync") as results:
                # Everything under way is held at the server: the window fills and stops.
                await sim.wait_for_async(lambda: sim.in_flight() == 3, timeout=10)
                window = results.stats().running
                assert window == 16  # twice the limit, the downloads: the minimum
                assert pulled[0] <= window + 1  # the next item waits for room
                assert client.governor_stats().waiting == window - 3
    assert pulled[0] <= window + 1
    assert results.stats().running == 0


async def test_async_items_are_added_while_the_governor_has_room_to_spare(sim, monkeypatch):
    monkeypatch.setattr("nanobanana._batch._engine._MAX_WINDOW", 50)
    prompts, pulled = counting(100_000)
    sparse = PollPolicy(first_delay=0.5, max_interval=0.5, jitter=0.0)
    async with client_of(sim, poll_policy=sparse) as client:
        with sim.hold():
            async with client.batch(prompts) as results:
                # Held generations polled twice a second keep 3 slots nearly idle: the
                # window grows past its base (2 x 3 + 8 + 10 = 24) to the bound.
                await sim.wait_for_async(lambda: len(sim.generations) == 50, timeout=10)
                assert results.stats().running == 50
                assert pulled[0] <= 51


async def test_an_async_iterable_input_works_too(sim):
    async def prompts():
        for n in range(5):
            yield f"an async prompt {n}"

    async with client_of(sim) as client:
        results = await collect(client.batch(prompts(), mode="sync"))
    assert sorted(r.index for r in results) == [0, 1, 2, 3, 4]
    assert all(r.ok for r in results)


async def test_one_items_failure_is_its_result_and_the_others_go_on(sim):
    prompts = ["fine 1", "broken [fail]", "fine 2"]
    async with client_of(sim) as client:
        results = {r.index: r for r in await collect(client.batch(prompts))}
    failed = results[1]
    assert (failed.ok, failed.status, failed.generation) == (False, "failed", None)
    assert isinstance(failed.error, GenerationFailedError)
    assert failed.generation_id == failed.error.generation_id is not None
    assert failed.credits_used == 1  # paid for
    assert results[0].ok
    assert results[2].ok


async def test_sync_and_stream_modes_report_failures_with_the_generation_id(sim, tmp_path):
    prompts = ["fine", "unsafe [unsafe]", "broken [fail]"]
    async with client_of(sim) as client:
        sync = {r.index: r for r in await collect(client.batch(prompts, mode="sync"))}
        stream = {
            r.index: r
            for r in await collect(client.batch(prompts, mode="stream", download_dir=tmp_path))
        }
    assert isinstance(sync[1].error, ContentSafetyError)
    assert sync[1].status == "failed"
    assert sync[1].generation_id
    # A sync 500 after the charge: the id is known, so a later run can poll it.
    assert isinstance(sync[2].error, InternalServerError)
    assert (sync[2].status, bool(sync[2].generation_id)) == ("error", True)
    assert stream[0].ok
    assert stream[0].files[0].read_bytes().startswith(PNG)
    assert isinstance(stream[2].error, GenerationFailedError)
    assert charges(sim) == 6


async def test_out_of_credits_stops_starting_items_and_raises_after_the_results(sim):
    sim.add_account("nb_poor", credits=3, concurrency_limit=1)
    prompts = [f"prompt {n}" for n in range(8)]
    async with client_of(sim, api_key="nb_poor", max_concurrency=1) as client:
        seen = []
        with pytest.raises(InsufficientCreditsError):  # noqa: PT012 - after the results
            async with client.batch(prompts, mode="sync") as results:
                async for result in results:
                    seen.append(result)  # noqa: PERF401 - those before the error count
    assert [r.status for r in seen] == ["completed"] * 3 + ["error"]
    assert isinstance(seen[-1].error, InsufficientCreditsError)
    assert len(posts(sim)) == 4  # the items after it were never sent
    assert sim.credits("nb_poor") == 0


async def test_a_wrong_key_stops_the_batch_at_the_first_answer(sim):
    async with client_of(sim, api_key="nb_wrong", max_concurrency=1) as client:
        seen = []
        with pytest.raises(AuthenticationError):  # noqa: PT012 - after the results
            async for result in client.batch([f"prompt {n}" for n in range(20)]):
                seen.append(result)  # noqa: PERF401 - those before the error count
    assert len(seen) == 1
    assert seen[0].status == "error"
    assert len(posts(sim)) == 1


async def test_misuse_raises_before_or_after_what_was_paid_for(sim, tmp_path):
    async with client_of(sim) as client:
        with pytest.raises(TypeError, match="not a single one"):
            client.batch("a cat")
        with pytest.raises(TypeError, match="iterable"):
            client.batch(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="mode"):
            client.batch(["a"], mode="fast")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="item_timeout"):
            client.batch(["a"], item_timeout=0)
        with pytest.raises(ValueError, match="at least 1"):
            client.batch(["a"], quantity=0)
        afile = tmp_path / "afile"
        afile.write_text("")
        with pytest.raises(NotADirectoryError, match="not a folder"):
            async with client.batch(["a"], download_dir=afile):
                pass
        assert sim.requests == ()  # nothing was sent, nothing paid

        # Items that sent nothing stop with the batch: nothing more is paid for.
        seen = []
        with pytest.raises(TypeError, match=r"item 1 is a int"):  # noqa: PT012
            async for result in client.batch(["fine", 3, "never"]):  # type: ignore[list-item]
                seen.append(result)  # noqa: PERF401 - those before the error count
        assert seen == []
        assert sim.requests == ()
        with pytest.raises(ValueError, match="item 1: prompt must not be empty"):
            await collect(client.batch(["a", "  "]))
        assert sim.requests == ()

        # An item already sent goes on to its result first.
        async def failing():
            yield "fine"
            await sim.wait_for_async(lambda: len(sim.generations) == 1)
            raise RuntimeError("the input broke")

        seen = []
        with pytest.raises(RuntimeError, match="the input broke"):  # noqa: PT012
            async for result in client.batch(failing()):
                seen.append(result)
        assert [r.status for r in seen] == ["completed"]

        batch = client.batch(["a"])
        await collect(batch)
        with pytest.raises(RuntimeError, match="runs once"):
            await collect(batch)


async def test_an_item_past_its_deadline_times_out_and_keeps_its_generation_id(sim):
    prompts = ["stuck [slow=30]", "fine"]
    async with client_of(sim) as client:
        results = {r.index: r for r in await collect(client.batch(prompts, item_timeout=0.5))}
    stuck = results[0]
    assert stuck.status == "timeout"
    assert isinstance(stuck.error, JobTimeoutError)
    assert stuck.error.generation_id == stuck.generation_id is not None
    assert results[1].ok


async def test_downloads_do_not_count_against_the_account_limit_and_overlap_generations(
    sim, tmp_path
):
    prompts = ["first", *(f"slow {n} [slow=1]" for n in range(4)), "two images"]
    items = [*prompts[:-1], BatchRequest(prompt=prompts[-1], quantity=2)]
    async with client_of(sim) as client:
        results = await collect(client.batch(items, download_dir=tmp_path))
        assert client.governor_stats().max_active <= 3
    assert all(r.ok for r in results)
    assert sum(len(r.files) for r in results) == 7
    assert len(list(tmp_path.iterdir())) == 7
    assert sim.max_in_flight() <= 3
    # The first image was fetched while the slow ones were still generating.
    cdn = [r for r in sim.requests if r.origin == "cdn"]
    slow_ids = {g.id for g in sim.generations if "[slow=1]" in g.prompt}
    last_slow_poll = max(r.end for r in sim.requests if r.generation_id in slow_ids)
    assert min(r.time for r in cdn) < last_slow_poll


async def test_finished_results_are_not_kept_by_the_batch(sim):
    refs = []
    prompts = [f"prompt {n}" for n in range(30)]
    async with client_of(sim) as client, client.batch(prompts) as results:
        async for result in results:
            refs.append(weakref.ref(result))
            if len(refs) == 20:
                del result
                gc.collect()
                assert all(ref() is None for ref in refs[:19])


async def test_stats_count_what_a_progress_display_shows(sim):
    prompts = ["a", "b [fail]", "c"]
    async with client_of(sim) as client:
        async with client.batch(prompts) as results:
            async for _ in results:
                stats = results.stats()
                assert stats.done + stats.running <= 3
        stats = results.stats()
    assert (stats.done, stats.failed, stats.running, stats.credits_spent) == (3, 1, 0, 3)
    assert results.unfinished_ids() == ()
    assert "done=3" in repr(results)


async def test_a_finished_batch_run_again_with_its_journal_sends_nothing(sim, tmp_path):
    journal = tmp_path / "batch.jsonl"
    images = tmp_path / "images"
    prompts = ["a", "b [fail]", "c", "a"]
    async with client_of(sim) as client:
        first = {r.index: r for r in await collect(client.batch(prompts, journal=journal))}
        assert first[0].key != first[3].key  # a repeat is an item of its own
        before = len(sim.requests)
        again = {r.index: r for r in await collect(client.batch(prompts, journal=journal))}
        assert len(sim.requests) == before
        assert all(r.from_journal for r in again.values())
        assert again[0].generation == first[0].generation
        assert again[1].status == "failed"
        assert isinstance(again[1].error, GenerationFailedError)

        # Asked for images now: downloaded, not generated again.
        saved = await collect(client.batch(prompts, journal=journal, download_dir=images))
        assert sorted(len(r.files) for r in saved) == [0, 1, 1, 1]
        assert charges(sim) == 4

        # retry_failed pays for the failed one again, and only for it.
        retry = client.batch(prompts, journal=journal, retry_failed=True)
        retried = {r.index: r for r in await collect(retry)}
        assert retried[1].status == "failed"
        assert not retried[1].from_journal
        assert charges(sim) == 5
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert {r["status"] for r in records} <= {"sending", "submitted", "completed", "failed"}


async def test_an_interrupted_batch_resumes_by_polling_what_it_paid_for(sim, tmp_path):
    journal = tmp_path / "batch.jsonl"
    prompts = [f"prompt {n}" for n in range(12)]
    async with client_of(sim) as client:
        with sim.hold():
            async with client.batch(prompts, journal=journal) as results:
                await sim.wait_for_async(lambda: len(sim.generations) == 12, timeout=10)
                # All twelve are submitted (and held): leave without a result.
        submitted = set(results.unfinished_ids())
        assert submitted == {g.id for g in sim.generations}
        resumed = await collect(client.batch(prompts, journal=journal))
    assert charges(sim) == 12  # polled, not paid again
    assert {r.generation_id for r in resumed} == submitted
    assert all(r.ok and not r.from_journal for r in resumed)


async def test_a_request_without_an_answer_by_the_deadline_may_have_been_charged(sim):
    async with client_of(sim, max_concurrency=1) as client:
        with sim.hold():
            results = await collect(client.batch(["held"], mode="sync", item_timeout=0.3))
    [result] = results
    assert result.status == "maybe_charged"
    assert isinstance(result.error, APITimeoutError)
    assert result.error.may_have_been_charged
    assert charges(sim) == 1  # it was: the server accepted it


async def test_a_refusal_that_charged_nothing_is_not_taken_for_a_charge(tmp_path):
    journal = tmp_path / "j.jsonl"
    patient = RetryPolicy(attempts=4, wait_initial=0.005, retry_after_max=30.0)
    with Simulator(credits=100, max_async_tasks=1, busy_retry_after=30) as sim:
        async with sim.client(poll_policy=FAST_POLLS, retry_policy=patient) as client:
            with sim.hold():
                async with client.batch(["first", "second"], journal=journal):
                    # "first" runs (held); "second" was refused (503) and waits 30 s.
                    await sim.wait_for_async(
                        lambda: any(r.status == 503 for r in sim.requests), timeout=10
                    )
                    await sim.wait_for_async(lambda: "not_charged" in journal.read_text())
            records = [json.loads(line) for line in journal.read_text().splitlines()]
            second = [r["status"] for r in records if r["index"] == 1]
            assert second == ["sending", "not_charged"]
            resumed = {
                r.index: r
                for r in await collect(client.batch(["first", "second"], journal=journal))
            }
        assert resumed[1].ok  # generated now, not reported as maybe charged
        assert charges(sim) == 2


async def test_a_journal_that_cannot_be_written_stops_the_batch_with_the_error(
    sim, tmp_path, monkeypatch
):
    real_write = Journal.write

    def failing(self, record):
        if record.get("status") == "submitted":
            raise OSError(28, "No space left on device")
        real_write(self, record)

    monkeypatch.setattr(Journal, "write", failing)
    async with client_of(sim) as client:
        batch = client.batch([f"prompt {n}" for n in range(5)], journal=tmp_path / "j.jsonl")
        with pytest.raises(OSError, match="No space left"):
            await collect(batch)
        assert batch.stats().running == 0
        # The generations it could not record are not lost from sight.
        assert set(batch.unfinished_ids()) <= {g.id for g in sim.generations}
        assert batch.unfinished_ids()


async def test_a_bug_inside_the_engine_reaches_the_caller(sim, monkeypatch):
    async def broken(item, generation):
        raise RuntimeError("a bug")

    monkeypatch.setattr("nanobanana._batch._item._save", broken)
    async with client_of(sim) as client:
        with pytest.raises(RuntimeError, match="a bug"):  # several at once: their group
            await collect(client.batch(["a"]))


async def test_a_batch_wider_than_the_servers_async_cap_waits_for_room_and_loses_nothing():
    with Simulator(
        credits=1000, seed=9, concurrency_limit=3, max_async_tasks=3, generation_time=0.05
    ) as sim:
        async with sim.client(poll_policy=FAST_POLLS, max_concurrency=3) as client:
            results = await collect(client.batch([f"prompt {n}" for n in range(30)]))
            stats = client.governor_stats()
        assert sorted(r.index for r in results) == list(range(30))
        assert all(r.ok for r in results)
        assert charges(sim) == 30  # each once; a refused submit was refunded
        assert stats.task_limit == 3  # learned from the first 503
        # The first 503 states the cap; then the client keeps submissions for room.
        assert sum(r.status == 503 for r in sim.requests) <= 2


async def test_items_past_the_spend_cap_fail_alone_and_nothing_is_sent_for_them(sim, tmp_path):
    journal = tmp_path / "j.jsonl"
    prompts = [f"prompt {n}" for n in range(5)]
    async with client_of(sim, max_credits=3, max_concurrency=1) as client:
        results = {r.index: r for r in await collect(client.batch(prompts, journal=journal))}
    budget = [r for r in results.values() if isinstance(r.error, BudgetExceededError)]
    assert len(budget) == 2
    assert all(r.status == "error" and not r.generation_id for r in budget)
    assert sum(r.ok for r in results.values()) == 3
    assert charges(sim) == 3
    # Not paid for, so not final: a later run (with a new budget) generates them.
    async with client_of(sim, max_credits=10) as client:
        again = {r.index: r for r in await collect(client.batch(prompts, journal=journal))}
    assert all(r.ok for r in again.values())
    assert sum(r.from_journal for r in again.values()) == 3
    assert charges(sim) == 5
