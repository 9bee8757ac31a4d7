"""The real ``nanobanana`` command, as a subprocess, against the simulator.

Each subprocess costs a few hundred milliseconds of imports, so each test proves
several things at once; prompts carry the simulator's markers (``[fail]``,
``[unsafe]``, ``[slow=S]``) instead of slow set-ups.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clitools import assert_png, clean_env, run, start

from nanobanana.testing import Simulator

FAST = ("--poll-interval", "0.05")


def assert_one_error_line(stderr: str) -> str:
    """The failure is one `error: ...` line (plus hint lines), never a traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_models_through_the_console_script_and_credits_through_python_m(sim):
    models = run("models", sim=sim, script=True)
    assert models.code == 0, models.stderr
    names = [model["name"] for model in models.json()]
    assert "nano-banana" in names
    assert set(models.json()[0]) >= {"name", "display_name", "credits_cost", "requires_pro"}

    balance = run("credits", sim=sim)
    assert (balance.code, balance.json()) == (0, {"credits": 100})


def test_generate_sync_saves_valid_pngs_and_prints_the_generation(sim, tmp_path):
    sent = datetime.now(UTC)
    result = run(
        "generate", "--prompt", "a banana", "--quantity", "2", "--download-dir",
        str(tmp_path / "images"), "--aspect-ratio", "16:9", sim=sim,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    generation = result.json()
    assert generation["status"] == "completed"
    assert len(generation["image_urls"]) == len(generation["files"]) == 2
    for path in generation["files"]:
        assert_png(path)
    assert generation["credits_used"] == 2
    assert generation["remaining_credits"] == sim.credits() == 98
    assert set(generation) >= {"id", "prompt", "model", "created_at", "error_message"}
    # A sync answer has no created_at: the URLs expire 15 days after the request.
    expires_at = datetime.fromisoformat(generation["expires_at"])
    assert sent + timedelta(days=15) <= expires_at <= datetime.now(UTC) + timedelta(days=15)


def test_generate_stream_reports_progress_that_never_goes_back(tmp_path):
    # A heartbeat every 0.05 s during a 0.5 s generation: heartbeats say progress 0.
    with Simulator(generation_time=0.5, heartbeat_interval=0.05) as sim:
        result = run(
            "generate", "a banana", "--mode", "stream", "--download-dir", str(tmp_path), sim=sim
        )
    assert result.code == 0, result.stderr
    generation = result.json()
    assert generation["status"] == "completed"
    assert_png(generation["files"][0])
    shown = [
        int(line[1:4])
        for line in result.stderr.splitlines()
        if line.startswith("[") and "%]" in line
    ]
    assert shown == sorted(shown)
    assert shown[-1] == 100


def test_generate_async_prints_the_id_at_once_then_poll_picks_it_up(sim, tmp_path):
    with sim.hold() as hold:
        submitted = run("generate", "--prompt", "a banana", "--mode", "async", sim=sim)
        assert submitted.code == 0, submitted.stderr
        job = submitted.json()
        assert job["status"] == "processing"
        assert job["credits_used"] == 1
        assert job["expires_at"] is None  # the submission's answer has no created_at
        assert f"nanobanana poll --id {job['id']} --wait" in submitted.stderr

        still = run("poll", "--id", job["id"], sim=sim)
        assert (still.code, still.json()["status"]) == (0, "processing")
        polled = still.json()
        expires_at = datetime.fromisoformat(polled["expires_at"])
        assert expires_at == datetime.fromisoformat(polled["created_at"]) + timedelta(days=15)
        hold.release()

    done = run("poll", "--id", job["id"], "--wait", *FAST, "--download-dir", str(tmp_path), sim=sim)
    assert done.code == 0, done.stderr
    assert done.json()["status"] == "completed"
    assert_png(done.json()["files"][0])
    assert sim.credits() == 99  # polling charged nothing


def test_generate_async_wait_polls_until_done_and_shows_the_polls(sim, tmp_path):
    result = run(
        "generate", "--prompt", "a banana [slow=0.2]", "--mode", "async", "--wait", *FAST,
        "--download-dir", str(tmp_path), sim=sim,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    generation = result.json()
    assert generation["status"] == "completed"
    assert generation["remaining_credits"] == 99  # from the submission's answer
    assert_png(generation["files"][0])
    assert "(poll 1)" in result.stderr


def test_a_bad_key_exits_3_with_one_line_and_never_shows_the_key(sim):
    secret = "nb_wrong_secret_do_not_print_7f3a"
    result = run("--base-url", sim.base_url, "--api-key", secret, "credits")
    assert result.code == 3
    line = assert_one_error_line(result.stderr)
    assert "401" in line
    assert secret not in result.stderr + result.stdout
    assert result.stdout == ""


def test_no_credits_exits_3_and_charges_nothing():
    with Simulator(credits=0) as sim:
        result = run("generate", "--prompt", "a banana", "--mode", "stream", sim=sim)
        assert sim.credits() == 0
    assert result.code == 3
    assert "402" in assert_one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("mode", "prompt"),
    [("sync", "a banana [unsafe]"), ("stream", "a banana [fail]"), ("async", "a banana [fail]")],
)
def test_a_failed_or_refused_generation_exits_4(sim, mode, prompt):
    result = run("generate", "--prompt", prompt, "--mode", mode, "--wait", *FAST, sim=sim)
    assert result.code == 4, result.stderr
    line = assert_one_error_line(result.stderr)
    assert "safety" in line.lower() or "fail" in line.lower()
    assert result.stdout == ""


def test_the_service_clis_environment_variables_configure_the_key_and_url(sim):
    env = clean_env(NB_API_KEY=sim.api_key, NANO_BANANA_BASE_URL=sim.base_url)
    result = run("credits", env=env)
    assert (result.code, result.json()) == (0, {"credits": 100})


def test_json_mode_puts_an_error_document_on_stdout(sim):
    result = run(
        "--json", "generate", "--prompt", "x [fail]", "--mode", "async", "--wait", *FAST, sim=sim
    )
    assert result.code == 4
    error = result.json()["error"]
    assert error["type"] == "GenerationFailedError"
    assert error["exit_code"] == 4
    assert error["generation_id"]

    # Asked about later, the failed generation is reported, and still exits 4.
    later = run("--json", "poll", "--id", error["generation_id"], sim=sim)
    assert later.code == 4
    assert later.json()["status"] == "failed"
    assert later.json()["error_message"]


def test_a_wait_that_runs_out_exits_5_and_says_how_to_resume(sim):
    result = run(
        "generate", "--prompt", "a banana [slow=30]", "--mode", "async", "--wait",
        "--poll-interval", "0.05", "--max-polls", "2", sim=sim,
    )  # fmt: skip
    assert result.code == 5
    line = assert_one_error_line(result.stderr)
    generation_id = sim.generations[-1].id
    assert generation_id in line
    assert f"nanobanana poll --id {generation_id} --wait" in result.stderr


def test_an_unreachable_server_exits_6(sim):
    unreachable = "http://127.0.0.1:9/api/v1"
    result = run("--base-url", unreachable, "--api-key", "nb_x", "credits", "--max-retries", "0")
    assert result.code == 6
    assert_one_error_line(result.stderr)


def test_usage_errors_exit_2_before_anything_is_sent(sim):
    missing = run("generate", "--mode", "async", sim=sim)
    assert missing.code == 2
    assert "prompt" in assert_one_error_line(missing.stderr)
    bad = run("generate", "x", "--quantity", "0", sim=sim)
    assert bad.code == 2
    assert "--quantity" in bad.stderr
    assert [r for r in sim.requests if r.path.endswith("/generate")] == []


def test_quiet_prints_nothing_but_the_result(sim):
    result = run("--quiet", "generate", "a banana", "--mode", "stream", sim=sim)
    assert result.code == 0
    assert result.stderr == ""
    assert result.json()["status"] == "completed"


def test_simulate_needs_no_key_and_writes_pngs(tmp_path):
    # [slow=0] overrides the demo's 2-second generation time.
    result = run(
        "--simulate", "generate", "--prompt", "a banana [slow=0]", "--mode", "stream",
        "--download-dir", str(tmp_path), env=None,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert_png(result.json()["files"][0])
    assert "Traceback" not in result.stderr  # the embedded simulator stops quietly too


def test_ctrl_c_during_a_wait_exits_130_and_names_the_generation(sim, tmp_path):
    with sim.hold():
        process = start("generate", "a banana", "--mode", "async", "--wait", *FAST, sim=sim)
        # Interrupt once it is polling: the generation exists and was asked about.
        sim.wait_for(
            lambda: any(r.method == "GET" and r.path.endswith("/generate") for r in sim.requests),
            timeout=20,
        )
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    generation_id = sim.generations[-1].id
    assert f"nanobanana poll --id {generation_id} --wait" in stderr
    assert stdout == ""


def _generate_requests(sim) -> list:
    return [r for r in sim.requests if r.path.endswith("/generate")]


@pytest.mark.parametrize("command", ["generate", "poll"])
def test_a_download_dir_that_is_a_file_is_refused_before_anything_is_paid(sim, tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    if command == "generate":
        args = ("generate", "x", "--mode", "async", "--wait", *FAST)
    else:
        args = ("poll", "--id", "some-id", "--wait", *FAST)
    result = run("--json", *args, "--download-dir", str(afile), sim=sim)
    assert result.code == 2, result.stderr
    assert "not a directory" in assert_one_error_line(result.stderr)
    assert result.json()["error"]["exit_code"] == 2
    assert _generate_requests(sim) == []
    assert sim.credits() == 100


def test_a_failed_download_still_prints_the_paid_generation_and_how_to_save_it(sim, tmp_path):
    images = tmp_path / "images"
    sim.inject("cdn_410")  # the CDN answers the image request with 410 Gone
    result = run(
        "--json", "generate", "a banana", "--mode", "async", "--wait", *FAST,
        "--download-dir", str(images), sim=sim,
    )  # fmt: skip
    assert result.code == 6, result.stderr
    document = result.json()  # one document: the generation, and what went wrong
    generation_id = sim.generations[-1].id
    assert (document["id"], document["status"], document["files"]) == (
        generation_id, "completed", []
    )  # fmt: skip
    assert document["image_urls"]
    assert document["error"]["generation_id"] == generation_id
    assert document["error"]["exit_code"] == 6
    assert_one_error_line(result.stderr)
    hint = f"nanobanana poll --id {generation_id} --download-dir {images}"
    assert hint in result.stderr

    # The hint works, and costs nothing.
    again = run(*hint.split()[1:], sim=sim)
    assert again.code == 0, again.stderr
    assert_png(again.json()["files"][0])
    assert sim.credits() == 99


def test_a_partly_failed_download_lists_the_images_that_were_saved(sim, tmp_path):
    images = tmp_path / "images"
    sim.inject("cdn_410")  # one of the two image requests gets 410 Gone
    result = run(
        "--json", "generate", "a banana", "--mode", "async", "--wait", "--quantity", "2",
        *FAST, "--download-dir", str(images), sim=sim,
    )  # fmt: skip
    assert result.code == 6, result.stderr
    document = result.json()
    assert len(document["image_urls"]) == 2
    [saved] = document["files"]
    assert_png(saved)
    assert sorted(p.name for p in images.iterdir()) == [Path(saved).name]


def test_a_download_dir_removed_during_the_wait_keeps_the_generation(sim, tmp_path):
    images = tmp_path / "images"
    with sim.hold() as hold:
        process = start(
            "generate", "a banana", "--mode", "async", "--wait", *FAST,
            "--download-dir", str(images), sim=sim,
        )  # fmt: skip
        sim.wait_for(lambda: any(r.method == "GET" for r in _generate_requests(sim)), timeout=20)
        assert images.is_dir()  # created before the generation was sent
        images.rmdir()
        images.write_text("now a file")
        hold.release()
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 6, stderr
    generation_id = sim.generations[-1].id
    document = json.loads(stdout)
    assert (document["id"], document["status"], document["files"]) == (
        generation_id, "completed", []
    )  # fmt: skip
    line = assert_one_error_line(stderr)
    assert "save" in line.lower()
    assert str(images) in line
    assert f"nanobanana poll --id {generation_id} --download-dir {images}" in stderr


def test_max_polls_counts_polls_when_resuming_an_id(sim):
    with sim.hold():
        submitted = run("generate", "a banana", "--mode", "async", sim=sim)
        generation_id = submitted.json()["id"]
        result = run(
            "poll", "--id", generation_id, "--wait", "--max-polls", "2", "--poll-interval",
            "0.05", sim=sim,
        )  # fmt: skip
        polls = [r for r in _generate_requests(sim) if r.method == "GET"]
    assert result.code == 5, result.stderr
    assert len(polls) == 2


def test_a_timeout_hint_keeps_the_download_dir(sim, tmp_path):
    images = tmp_path / "my images"
    with sim.hold():
        result = run(
            "generate", "a banana", "--mode", "async", "--wait", "--poll-interval", "0.05",
            "--max-polls", "2", "--download-dir", str(images), sim=sim,
        )  # fmt: skip
    assert result.code == 5
    generation_id = sim.generations[-1].id
    resume = f"nanobanana poll --id {generation_id} --wait --download-dir '{images}'"
    assert resume in result.stderr
    assert len([r for r in _generate_requests(sim) if r.method == "GET"]) == 2


def test_ctrl_c_with_json_prints_an_error_document_and_a_hint_with_the_download_dir(sim, tmp_path):
    images = tmp_path / "images"
    with sim.hold():
        process = start(
            "--json", "generate", "a banana", "--mode", "async", "--wait", *FAST,
            "--download-dir", str(images), sim=sim,
        )  # fmt: skip
        sim.wait_for(lambda: any(r.method == "GET" for r in _generate_requests(sim)), timeout=20)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    generation_id = sim.generations[-1].id
    error = json.loads(stdout)["error"]
    assert (error["exit_code"], error["generation_id"]) == (130, generation_id)
    resume = f"nanobanana poll --id {generation_id} --wait --download-dir {images}"
    assert resume in stderr
    assert resume in error["hints"][0]


def test_a_possibly_charged_failure_gives_cli_advice_not_python(sim):
    sim.inject("status", status=500, after_charge=True)
    result = run("--json", "generate", "a banana", sim=sim)
    assert result.code == 6
    line = assert_one_error_line(result.stderr)
    assert "`nanobanana credits`" in line
    assert "credits()" not in line
    assert "get_generation()" not in line
    assert result.json()["error"]["may_have_been_charged"] is True


@pytest.mark.parametrize("json_mode", [False, True])
def test_ctrl_c_during_the_download_names_the_paid_generation_and_how_to_save_it(
    sim, tmp_path, json_mode
):
    images = tmp_path / "images"
    # The image request waits at the CDN (until the client leaves): Ctrl-C lands while
    # the generation is paid for and its images are on their way.
    stall = sim.inject("delay", seconds=60, origin="cdn")
    process = start(
        *(["--json"] if json_mode else []), "generate", "a banana", "--mode", "async",
        "--wait", *FAST, "--download-dir", str(images), sim=sim,
    )  # fmt: skip
    sim.wait_for(lambda: not any(f["kind"] == stall.kind for f in sim.faults), timeout=20)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    [generation] = sim.generations
    save = f"nanobanana poll --id {generation.id} --download-dir {images}"
    assert f"generation {generation.id} completed" in stderr
    assert save in stderr
    if json_mode:
        error = json.loads(stdout)["error"]
        assert (error["exit_code"], error["generation_id"]) == (130, generation.id)
        assert save in error["hints"][0]
    else:
        assert stdout == ""
    # The hint works, and costs nothing more.
    again = run(*save.split()[1:], sim=sim)
    assert again.code == 0, again.stderr
    assert_png(again.json()["files"][0])
    assert sim.credits() == 99
