"""``nanobanana batch`` as a subprocess: fan-out, JSON lines, downloads, and resuming."""

from __future__ import annotations

import json
import signal

from clitools import assert_png, run, start

from nanobanana.testing import Simulator

FAST = ("--poll-interval", "0.05")


def charges(sim) -> int:
    return sum(1 for entry in sim.ledger if entry.kind == "charge")


def test_batch_fans_out_writes_one_line_per_item_and_downloads(sim, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# the file's own comment\n"
        "a banana\n"
        '{"prompt": "a moon", "key": "moon", "aspect_ratio": "16:9", "quantity": 2}\n'
        "a dog [fail]\n"
    )
    out = tmp_path / "results.jsonl"
    result = run(
        "batch", str(prompts), "--output", str(out), "--download-dir", str(tmp_path / "img"),
        "--concurrency", "3", *FAST, sim=sim,
    )  # fmt: skip
    assert result.code == 4, result.stderr  # one generation failed
    lines = {line["key"]: line for line in result.lines()}
    assert len(lines) == 3
    moon = lines["moon"]
    assert (moon["status"], moon["line"], len(moon["files"])) == ("completed", 3, 2)
    for path in moon["files"]:
        assert_png(path)
    failed = next(line for line in lines.values() if line["prompt"].endswith("[fail]"))
    assert failed["status"] == "failed"
    assert failed["error"]["exit_code"] == 4
    assert failed["generation_id"]
    # The journal holds every result line too, each of them valid JSON.
    journal = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["key"] for r in journal if r["status"] != "submitted"} == set(lines)
    assert "Traceback" not in result.stderr

    again = run("batch", str(prompts), "--output", str(out), *FAST, sim=sim)
    assert again.code == 4
    assert len(again.lines()) == 3  # every item reported again, from the journal
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
            text = out.read_text()
            return sum('"status": "submitted"' in line for line in text.splitlines()[1:])

        sim.wait_for(lambda: submitted() == 2, timeout=20)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
        hold.release()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "re-run to resume" in stderr
    assert [line["status"] for line in map(json.loads, stdout.splitlines())] == ["completed"]
    assert charges(sim) == 3

    resumed = run("batch", str(prompts), "--output", str(out), *FAST, sim=sim)
    assert resumed.code == 0, resumed.stderr
    lines = resumed.lines()
    assert [line["status"] for line in lines] == ["completed"] * 3
    assert charges(sim) == 3  # the two interrupted ones were polled, not paid again
    assert {line["generation_id"] for line in lines} == {g.id for g in sim.generations}


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
    assert process.returncode == 6, stderr
    assert "Traceback" not in stderr
    [line] = [json.loads(text) for text in stdout.splitlines()]
    generation_id = sim.generations[-1].id
    assert (line["status"], line["generation_id"]) == ("error", generation_id)
    assert "save" in line["error"]["message"].lower()
    assert str(images) in line["error"]["message"]

    images.unlink()
    again = run(*args, sim=sim)
    assert again.code == 0, again.stderr
    [line] = again.lines()
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
    [line] = first.lines()
    assert (line["status"], line["generation_id"]) == ("lost", "gone")
    assert "--retry-failed" in line["error"]["message"]

    again = run(*args, sim=sim)  # not polled again: 404 is final
    assert [line["status"] for line in again.lines()] == ["lost"]
    assert "in an earlier run" in again.stderr
    assert len([r for r in sim.requests if r.method == "GET"]) == 1
    assert charges(sim) == 0

    retried = run(*args, "--retry-failed", sim=sim)
    assert retried.code == 0, retried.stderr
    [line] = retried.lines()
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
