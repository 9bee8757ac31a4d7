"""``nanobanana batch`` as a subprocess: fan-out, JSON lines, downloads, and resuming."""

from __future__ import annotations

import json
import signal

from clitools import assert_png, run, start

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
