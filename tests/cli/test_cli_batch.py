"""``nanobanana batch`` as a subprocess: fan-out, JSON lines, downloads, and resuming."""

from __future__ import annotations

import json
import signal

from clitools import assert_png, run, start

from nanobanana.testing import Simulator

FAST = ("--poll-interval", "0.05")


def charges(sim) -> int:
    return sum(1 for entry in sim.ledger if entry.kind == "charge")


def outcomes(journal) -> dict[str, dict]:
    """The last record of each key in an --output file (the batch's journal)."""
    last: dict[str, dict] = {}
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        last[record["key"]] = record
    return last


def test_batch_fans_out_writes_one_line_per_item_and_downloads(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# the file's own comment\n"
        "a banana\n"
        '{"prompt": "a moon", "key": "moon", "aspect_ratio": "16:9", "quantity": 2}\n'
        "a dog [fail]\n"
    )
    result = run(
        "batch", str(prompts), "--download-dir", str(tmp_path / "img"), "--concurrency", "3",
        *FAST, sim=sim,
    )  # fmt: skip
    assert result.code == 4, result.stderr  # one generation failed
    lines = {line["key"]: line for line in result.lines()}
    assert len(lines) == 3
    moon = lines["moon"]
    assert (moon["status"], moon["line"], moon["index"], len(moon["files"])) == (
        "completed",
        3,
        1,
        2,
    )
    for path in moon["files"]:
        assert_png(path)
    failed = next(line for line in lines.values() if line["prompt"].endswith("[fail]"))
    assert failed["status"] == "failed"
    assert failed["error"]["exit_code"] == 4
    assert failed["generation_id"]
    assert "Traceback" not in result.stderr
    assert "3 items: 2 completed, 1 failed; 4 credits" in result.stderr


def test_with_output_the_results_go_to_the_file_and_a_rerun_pays_nothing_again(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a banana\n{"prompt": "a moon", "key": "moon"}\na dog [fail]\n')
    out = tmp_path / "results.jsonl"
    result = run("batch", str(prompts), "--output", str(out), *FAST, sim=sim)
    assert result.code == 4, result.stderr
    assert result.stdout == ""  # the results are in the file, not over the progress
    assert f"results: {out}" in result.stderr
    records = outcomes(out)
    assert len(records) == 3
    assert records["moon"]["status"] == "completed"
    failed = next(r for r in records.values() if r["prompt"].endswith("[fail]"))
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "GenerationFailedError"
    assert "--retry-failed generates the 1 failed items again" in result.stderr
    # Every line of the journal is whole JSON; the last of each key is its outcome.
    assert all(json.loads(line) for line in out.read_text().splitlines())

    again = run("batch", str(prompts), "--output", str(out), *FAST, sim=sim)
    assert again.code == 4
    assert again.stderr.count("(in an earlier run)") == 3  # every item reported again
    assert charges(sim) == 3  # nothing ran twice, the failed one included


def test_an_interrupted_batch_resumes_polling_instead_of_paying_again(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana\n")
    out = tmp_path / "results.jsonl"
    first = run("batch", str(prompts), "--output", str(out), *FAST, sim=sim)
    assert first.code == 0, first.stderr

    prompts.write_text("a banana\na cat\na dog\n")
    with sim.hold() as hold:  # the new generations stay processing: Ctrl-C comes mid-wait
        process = start("batch", str(prompts), "--output", str(out), *FAST, sim=sim)

        def submitted() -> int:
            return sum(r["status"] == "submitted" for r in outcomes(out).values())

        sim.wait_for(lambda: submitted() == 2, timeout=20)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
        hold.release()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "re-run to resume" in stderr
    assert stdout == ""
    assert sorted(r["status"] for r in outcomes(out).values()) == [
        "completed",
        "submitted",
        "submitted",
    ]
    assert charges(sim) == 3

    resumed = run("batch", str(prompts), "--output", str(out), *FAST, sim=sim)
    assert resumed.code == 0, resumed.stderr
    records = outcomes(out).values()
    assert [r["status"] for r in records] == ["completed"] * 3
    assert charges(sim) == 3  # the two interrupted ones were polled, not paid again
    assert {r["generation_id"] for r in records} == {g.id for g in sim.generations}


def test_an_interrupted_batch_without_output_names_the_generations_still_running(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana\na cat\n")
    with sim.hold():
        process = start("batch", str(prompts), *FAST, sim=sim)
        sim.wait_for(lambda: len(sim.generations) == 2, timeout=20)
        sim.wait_for(lambda: sim.in_flight() == 0 and len(sim.requests) >= 3, timeout=20)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    for generation in sim.generations:
        assert f"generation {generation.id} is still running" in stderr
        assert f"nanobanana poll --id {generation.id} --wait" in stderr


def test_batch_stops_starting_items_after_an_auth_error(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {n}\n" for n in range(6)))
    result = run(
        "--base-url", sim.base_url, "--api-key", "nb_wrong", "batch", str(prompts),
        "--concurrency", "1", "--mode", "sync",
    )  # fmt: skip
    assert result.code == 3
    assert len(result.lines()) == 1
    assert "401" in result.lines()[0]["error"]["message"]
    assert "not started" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_batch_file_is_a_usage_error_that_costs_nothing(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a banana\n{"prompt": "x", "colour": "red"}\n')
    result = run("batch", str(prompts), sim=sim)
    assert result.code == 2
    assert "line 2" in result.stderr
    assert "unknown field 'colour'" in result.stderr
    assert sim.requests == ()


def submitted_in(journal) -> bool:
    return journal.exists() and '"status": "submitted"' in journal.read_text()


def net_charges(sim) -> int:
    return charges(sim) - sum(1 for entry in sim.ledger if entry.kind == "refund")


def test_a_batch_download_dir_that_is_a_file_is_refused_before_anything_is_paid(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana\n")
    afile = tmp_path / "afile"
    afile.write_text("")
    result = run("batch", str(prompts), "--download-dir", str(afile), sim=sim)
    assert result.code == 2, result.stderr
    assert "not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert sim.requests == ()


def test_a_batch_download_dir_broken_mid_run_keeps_the_id_and_a_rerun_only_downloads(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana\n")
    out = tmp_path / "results.jsonl"
    images = tmp_path / "images"
    args = ("batch", str(prompts), "-o", str(out), "--download-dir", str(images), *FAST)
    with sim.hold() as hold:
        process = start(*args, sim=sim)
        sim.wait_for(lambda: submitted_in(out), timeout=20)
        images.rmdir()
        images.write_text("now a file")
        hold.release()
        stdout, stderr = process.communicate(timeout=20)
    assert stdout == ""  # with -o, the results are in the file
    assert process.returncode == 6, stderr
    assert "Traceback" not in stderr
    [line] = outcomes(out).values()
    generation_id = sim.generations[-1].id
    assert (line["status"], line["generation_id"]) == ("error", generation_id)
    assert "save" in line["error"]["message"].lower()
    assert str(images) in line["error"]["message"]

    images.unlink()
    again = run(*args, sim=sim)
    assert again.code == 0, again.stderr
    [line] = outcomes(out).values()
    assert (line["status"], line["generation_id"]) == ("completed", generation_id)
    assert_png(line["files"][0])
    assert charges(sim) == 1  # downloaded, not paid again


def test_the_resume_hint_of_an_interrupted_batch_never_shows_the_api_key(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana\n")
    out = tmp_path / "results.jsonl"
    with sim.hold():
        # The key twice: `--api-key KEY` (from clitools) and `--api-key=KEY`.
        process = start(
            "batch", str(prompts), "-o", str(out), f"--api-key={sim.api_key}", *FAST, sim=sim
        )
        sim.wait_for(lambda: submitted_in(out), timeout=20)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "re-run to resume" in stderr
    assert sim.api_key not in stderr
    [resume] = [line for line in stderr.splitlines() if "re-run to resume" in line]
    assert "--api-key" not in resume
    assert f"batch {prompts} -o {out}" in resume


def test_an_item_whose_generation_is_gone_is_lost_and_retry_failed_generates_it_again(
    sim, tmp_path
):
    # What an interrupted `--simulate batch -o` leaves: an id its simulator took along.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('{"prompt": "a banana", "key": "k"}\n')
    out = tmp_path / "results.jsonl"
    out.write_text('{"key": "k", "status": "submitted", "generation_id": "gone"}\n')
    args = ("batch", str(prompts), "-o", str(out), *FAST)

    first = run(*args, sim=sim)
    assert first.code == 3, first.stderr
    [line] = outcomes(out).values()
    assert (line["status"], line["generation_id"]) == ("lost", "gone")
    assert "--retry-failed generates the 1 failed items again" in first.stderr

    again = run(*args, sim=sim)  # not polled again: 404 is final
    assert [r["status"] for r in outcomes(out).values()] == ["lost"]
    assert "in an earlier run" in again.stderr
    assert len([r for r in sim.requests if r.method == "GET"]) == 1
    assert charges(sim) == 0

    retried = run(*args, "--retry-failed", sim=sim)
    assert retried.code == 0, retried.stderr
    [line] = outcomes(out).values()
    assert line["status"] == "completed"
    assert line["generation_id"] == sim.generations[-1].id
    assert charges(sim) == 1


def test_batch_keeps_sending_items_the_busy_server_refunded(tmp_path):
    # The server runs 2 async tasks at once; 4 items at once meet a 503, which states the
    # cap: the client then keeps the other items queued until some finish (even with
    # --max-retries 0: refusals are waited out with patience, not counted as retries).
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {n}\n" for n in range(4)))
    with Simulator(max_async_tasks=2, busy_retry_after=0.05) as sim:

        def refusals() -> int:
            return sum(r.status == 503 for r in sim.requests)

        with sim.hold() as hold:
            process = start(
                "batch", str(prompts), "--concurrency", "4", "--max-retries", "0", *FAST,
                sim=sim,
            )  # fmt: skip
            sim.wait_for(lambda: refusals() >= 1 and net_charges(sim) == 2, timeout=20)
            hold.release()
            stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert [json.loads(line)["status"] for line in stdout.splitlines()] == ["completed"] * 4
        assert net_charges(sim) == 4  # each 503 was refunded
        assert refusals() == 1  # the first 503 said the cap; the rest waited for room


def test_an_output_file_that_cannot_be_the_journal_is_refused_before_anything_is_sent(
    sim, tmp_path
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana\n")
    missing = run("batch", str(prompts), "-o", str(tmp_path / "no" / "out.jsonl"), sim=sim)
    assert missing.code == 2, missing.stderr
    assert "No such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert sim.requests == ()

    # One batch per journal at a time: a second run would pay for what the first has
    # not recorded yet.
    out = tmp_path / "out.jsonl"
    with sim.hold():
        first = start("batch", str(prompts), "-o", str(out), *FAST, sim=sim)
        try:
            sim.wait_for(lambda: submitted_in(out), timeout=20)
            second = run("batch", str(prompts), "-o", str(out), *FAST, sim=sim)
        finally:
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=20)
    assert second.code == 2, second.stderr
    assert "in use by another batch" in second.stderr
    assert charges(sim) == 1
