"""The batch's pure parts: item values, keys, the journal file and what is read back."""

from __future__ import annotations

import json
import os

import anyio
import pytest

from nanobanana import (
    APIConnectionError,
    BatchRequest,
    ContentSafetyError,
    GenerationFailedError,
    GenerationStatus,
    NotFoundError,
)
from nanobanana._batch._journal import Journal
from nanobanana._batch._keys import Keys, content_digest
from nanobanana._batch._records import PlanKind, outcome_record, plan_for, replay
from nanobanana._batch._values import BatchResult
from nanobanana._models import Generation

# -- values ----------------------------------------------------------------------------


def test_a_batch_request_is_checked_as_generate_checks_its_arguments():
    request = BatchRequest(prompt="a moon", reference_image_urls=["https://x/a.png"])
    assert request.reference_image_urls == ("https://x/a.png",)
    with pytest.raises(ValueError, match="empty"):
        BatchRequest(prompt="  ")
    with pytest.raises(TypeError, match="prompt must be a str"):
        BatchRequest(prompt=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        BatchRequest(prompt="x", quantity=0)
    with pytest.raises(TypeError, match="not a single string"):
        BatchRequest(prompt="x", reference_image_urls="https://x/a.png")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        BatchRequest(prompt="x", key="")
    with pytest.raises(TypeError):
        BatchRequest("positional")  # type: ignore[misc]


# -- keys ------------------------------------------------------------------------------


def test_keys_are_the_command_lines_content_digests_so_old_output_files_resume():
    # Values computed with the CLI's own digest before the engine moved to the library.
    keys = Keys()
    requests = [
        BatchRequest(prompt="a banana"),
        BatchRequest(prompt="a banana"),
        BatchRequest(
            prompt="a moon",
            aspect_ratio="16:9",
            quantity=2,
            reference_image_urls=["https://x/y.png"],
        ),
        BatchRequest(prompt="a moon", model="m", key="k1"),
        BatchRequest(prompt="a banana"),
    ]
    got = [keys.key(request, index=i) for i, request in enumerate(requests)]
    assert got == ["7172acbe08f7", "7172acbe08f7#2", "67660ae6edbe", "k1", "7172acbe08f7#3"]


def test_keys_follow_content_so_an_edit_above_an_item_does_not_rename_it():
    first = [Keys().key(BatchRequest(prompt=p), index=0) for p in ("a cat",)]
    keys = Keys()
    moved = [keys.key(BatchRequest(prompt=p), index=i) for i, p in enumerate(["new", "a cat"])]
    assert first[0] == moved[1]
    assert content_digest(BatchRequest(prompt="a cat")) == first[0]


def test_an_explicit_key_used_twice_is_refused_naming_the_item():
    keys = Keys()
    keys.key(BatchRequest(prompt="a", key="k"), index=0)
    with pytest.raises(ValueError, match="item 1: key 'k' is used twice"):
        keys.key(BatchRequest(prompt="b", key="k"), index=1)


# -- the journal file ------------------------------------------------------------------


async def test_the_last_record_of_a_key_wins_and_each_key_is_read_back_once(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = await Journal.open(path)
    journal.write({"key": "a", "status": "sending"})
    journal.write({"key": "a", "status": "submitted", "generation_id": "g"})
    journal.write({"key": "b", "status": "completed", "generation_id": "h"})
    await journal.aclose()
    again = await Journal.open(path)
    try:
        assert len(again) == 2
        assert again.take("a") == {"key": "a", "status": "submitted", "generation_id": "g"}
        assert again.take("a") is None
        assert again.take("missing") is None
    finally:
        await again.aclose()


async def test_a_line_torn_by_a_crash_is_skipped_and_the_next_record_starts_afresh(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "status": "completed"}\nnot json\n{"key": "b", "status": "sub')
    journal = await Journal.open(path)
    assert journal.take("b") is None  # the torn record is not one
    journal.write({"key": "b", "status": "submitted", "generation_id": "g"})
    await journal.aclose()
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"key": "b", "status": "submitted", "generation_id": "g"}
    again = await Journal.open(path)
    try:
        assert again.take("a") == {"key": "a", "status": "completed"}
        assert again.take("b") == {"key": "b", "status": "submitted", "generation_id": "g"}
    finally:
        await again.aclose()


async def test_a_journal_in_use_by_another_batch_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = await Journal.open(path)
    try:
        with pytest.raises(BlockingIOError, match="in use by another batch"):
            await Journal.open(path)
    finally:
        await journal.aclose()
    await (await Journal.open(path)).aclose()  # released on close


async def test_records_written_while_an_fsync_runs_share_the_next_one(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    journal = await Journal.open(path)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)

    async def durable(n: int) -> None:
        journal.write({"key": f"k{n}", "status": "submitted", "generation_id": f"g{n}"})
        await journal.sync()

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(durable, n)
    assert 1 <= len(synced) <= 2  # one flush for all of them (one more if one started early)
    await journal.sync()  # nothing new: no flush
    assert len(synced) <= 2
    await journal.aclose()
    assert len(path.read_text().splitlines()) == 20


async def test_a_new_journal_is_created_and_the_writes_reach_the_file_at_once(tmp_path):
    path = tmp_path / "deep" / "j.jsonl"
    with pytest.raises(FileNotFoundError):
        await Journal.open(path)  # the folder must exist: a typo is not silently created
    path = tmp_path / "j.jsonl"
    journal = await Journal.open(path)
    journal.write({"key": "a", "status": "sending"})
    # Before any sync or close: what a `kill -9` now would leave.
    assert path.read_text() == '{"key": "a", "status": "sending"}\n'
    await journal.aclose()
    await journal.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        journal.write({"key": "b"})


# -- what the next run makes of a record -----------------------------------------------


@pytest.mark.parametrize(
    ("record", "retry_failed", "kind", "generation_id"),
    [
        (None, False, PlanKind.NEW, None),
        ({"status": "sending"}, False, PlanKind.REPLAY, None),
        ({"status": "sending"}, True, PlanKind.NEW, None),
        ({"status": "not_charged"}, False, PlanKind.NEW, None),
        ({"status": "submitted", "generation_id": "g"}, False, PlanKind.RESUME, "g"),
        ({"status": "timeout", "generation_id": "g"}, False, PlanKind.RESUME, "g"),
        ({"status": "error", "generation_id": "g"}, False, PlanKind.RESUME, "g"),
        ({"status": "error", "generation_id": None}, False, PlanKind.NEW, None),
        (
            {"status": "error", "error": {"may_have_been_charged": True}},
            False,
            PlanKind.REPLAY,
            None,
        ),
        ({"status": "completed", "generation_id": "g"}, False, PlanKind.REPLAY, "g"),
        ({"status": "completed", "generation_id": "g"}, True, PlanKind.REPLAY, "g"),
        ({"status": "failed", "generation_id": "g"}, False, PlanKind.REPLAY, "g"),
        ({"status": "failed", "generation_id": "g"}, True, PlanKind.NEW, None),
        ({"status": "lost", "generation_id": "g"}, True, PlanKind.NEW, None),
        ({"status": "maybe_charged"}, False, PlanKind.REPLAY, None),
        ({"status": "from the future", "generation_id": "g"}, False, PlanKind.RESUME, "g"),
    ],
)
def test_what_the_next_run_does_with_each_kind_of_record(record, retry_failed, kind, generation_id):
    plan = plan_for(record, retry_failed=retry_failed, download_dir=None)
    assert (plan.kind, plan.generation_id if kind is not PlanKind.NEW else None) == (
        kind,
        generation_id,
    )


def test_a_completed_item_whose_images_are_missing_is_downloaded_again(tmp_path):
    image = tmp_path / "g-0.png"
    image.write_bytes(b"png")
    record = {
        "status": "completed",
        "generation_id": "g",
        "image_urls": ["https://cdn/x"],
        "files": [str(image)],
    }
    assert plan_for(record, retry_failed=False, download_dir=tmp_path).kind is PlanKind.REPLAY
    image.unlink()
    plan = plan_for(record, retry_failed=False, download_dir=tmp_path)
    assert (plan.kind, plan.generation_id) == (PlanKind.RESUME, "g")
    # Finished before a download_dir was asked for: download now.
    unsaved = {**record, "files": []}
    assert plan_for(unsaved, retry_failed=False, download_dir=tmp_path).kind is PlanKind.RESUME
    assert plan_for(unsaved, retry_failed=False, download_dir=None).kind is PlanKind.REPLAY


def _result_of(record):
    return replay(record, index=4, prompt="a cat", key="k")


def test_outcomes_read_back_are_the_results_that_were_recorded(tmp_path):
    generation = Generation(
        id="g1",
        status=GenerationStatus.COMPLETED,
        image_urls=("https://cdn/a.png",),
        prompt="a cat",
        model="nano-banana",
        credits_used=1,
    )
    result = BatchResult(
        index=4,
        prompt="a cat",
        generation=generation,
        files=(tmp_path / "g1-0.png",),
        key="k",
        generation_id="g1",
        credits_used=1,
    )
    back = _result_of(json.loads(json.dumps(outcome_record(result))))
    assert back.from_journal
    assert (back.index, back.key, back.status, back.ok) == (4, "k", "completed", True)
    assert back.generation == generation
    assert back.files == result.files

    failed = _result_of({"status": "failed", "generation_id": "g2", "error": {"message": "boom"}})
    assert isinstance(failed.error, GenerationFailedError)
    assert (failed.error.generation_id, failed.error.message) == ("g2", "boom")
    unsafe = _result_of(
        {"status": "failed", "generation_id": "g3", "error": {"type": "ContentSafetyError"}}
    )
    assert isinstance(unsafe.error, ContentSafetyError)
    lost = _result_of({"status": "lost", "generation_id": "g4"})
    assert isinstance(lost.error, NotFoundError)
    assert lost.error.status_code == 404
    sent = _result_of({"status": "sending"})
    assert sent.status == "maybe_charged"
    assert isinstance(sent.error, APIConnectionError)
    assert sent.error.may_have_been_charged
    assert "may have been charged" in sent.error.message
    recorded = _result_of(
        {
            "status": "maybe_charged",
            "error": {"type": "InternalServerError", "message": "500: may have been charged"},
        }
    )
    assert recorded.error is not None
    assert recorded.error.message == "500: may have been charged"
    assert recorded.error.may_have_been_charged  # type: ignore[attr-defined]


def test_an_outcome_record_carries_what_a_person_reading_the_file_needs(tmp_path):
    error = GenerationFailedError("Generation g failed: boom", generation_id="g")
    record = outcome_record(
        BatchResult(index=0, prompt="p", error=error, status="failed", key="k", generation_id="g")
    )
    assert record["status"] == "failed"
    assert record["error"] == {"type": "GenerationFailedError", "message": error.message}
    assert json.loads(json.dumps(record)) == record
