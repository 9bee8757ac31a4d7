"""In-process tests of the CLI's pure parts: exit codes, batch input, journal, polling."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

import nanobanana
import nanobanana.cli
from nanobanana._errors import CHARGE_WARNING
from nanobanana._models import Generation, GenerationStatus
from nanobanana.cli import _app, main
from nanobanana.cli._batch import _batch_options
from nanobanana.cli._exit import EXIT_CODES_HELP, ExitCode, UsageError, exit_code_for
from nanobanana.cli._input import BatchInput, InputError, iter_requests
from nanobanana.cli._output import Output, error_json, generation_json, message_for
from nanobanana.cli._polling import PollCount, poll_schedule, wait_for_job
from nanobanana.cli._progress import PlainReporter, Reporter, reporter
from nanobanana.cli._session import check_download_dir, without_api_key


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (nanobanana.GenerationFailedError("x", generation_id="g"), 4),
        (
            nanobanana.ContentSafetyError(
                "x", generation_id="g", credits_used=1, remaining_credits=0
            ),
            4,
        ),
        (nanobanana.JobTimeoutError("x", generation_id="g"), 5),
        (nanobanana.APITimeoutError("x"), 5),
        (nanobanana.MissingAPIKeyError("x"), 3),
        (nanobanana.BudgetExceededError("x", needed=2, remaining=1), 3),
        (nanobanana.UnknownModelError("x", model="m", known=()), 3),
        (nanobanana.APIConnectionError("x"), 6),
        (nanobanana.UnexpectedResponseError("x"), 6),
        (nanobanana.DownloadError("x", url="https://cdn/x"), 6),
        (KeyboardInterrupt(), 130),
        (RuntimeError("bug"), 1),
    ],
)
def test_each_kind_of_error_has_its_exit_code(error, code):
    assert exit_code_for(error) == code


def test_exit_codes_are_documented_in_the_module_docstring_and_the_help_epilog():
    doc = nanobanana.cli.__doc__ or ""
    help_text = _app.build_parser().format_help()
    for code in ExitCode:
        assert f"\n{int(code)} " in doc
        assert f"\n  {int(code)} " in EXIT_CODES_HELP
    assert EXIT_CODES_HELP in help_text


def test_importing_nanobanana_imports_neither_the_cli_nor_rich():
    # httpx imports rich itself when its own CLI's extras (click, rich) are installed,
    # so count only what `import nanobanana` adds on top of `import httpx`.
    code = (
        "import sys, httpx; before = set(sys.modules); import nanobanana; "
        "print(sorted(m for m in set(sys.modules) - before "
        "if m.startswith(('nanobanana.cli', 'rich'))))"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def parse_items(lines, *, name):
    return [(number, request) for number, request in iter_requests(lines, name=name)]


def test_batch_input_mixes_plain_prompts_and_json_lines_and_skips_comments():
    items = parse_items(
        [
            "# a comment",
            "a banana",
            "",
            '{"prompt": "a moon", "aspectRatio": "16:9", "key": "moon", "quantity": 2}',
            '{"prompt": "a cat", "referenceImageUrls": ["https://x/cat.png"]}',
        ],
        name="f",
    )
    line, moon = items[1]
    assert (moon.key, line, moon.prompt) == ("moon", 4, "a moon")
    assert moon.aspect_ratio == "16:9"
    assert moon.quantity == 2
    assert items[2][1].reference_image_urls == ("https://x/cat.png",)
    assert items[0][0] == 2
    assert items[0][1].key is None  # the library gives it one


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x", "colour": "red"}', "unknown field 'colour'"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"prompt": "x", "quantity": 0}', "'quantity'"),
        ('{"prompt": "x", "reference_image_urls": ["ftp://x"]}', "http(s) URLs"),
        ('{"prompt": "x",', "not valid JSON"),
    ],
)
def test_bad_batch_lines_are_usage_errors_naming_the_line(line, message):
    with pytest.raises(InputError, match="line 2") as info:
        parse_items(["ok", line], name="prompts.txt")
    assert message in str(info.value)


def test_the_batch_file_is_checked_whole_and_counted_before_anything_is_sent(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('{"prompt": "a", "key": "k"}\n\n# note\n{"prompt": "b", "key": "k"}\n')
    with pytest.raises(InputError, match="line 4: key 'k' is used twice \\(first on line 1\\)"):
        BatchInput.open(str(path))
    path.write_text("\n# nothing\n")
    with pytest.raises(InputError, match="no prompts"):
        BatchInput.open(str(path))
    path.write_bytes(b"a banana\n\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        BatchInput.open(str(path))
    with pytest.raises(InputError, match="cannot read"):
        BatchInput.open(str(tmp_path / "missing.txt"))
    path.write_text('a banana\n{"prompt": "a moon"}\n')
    source = BatchInput.open(str(path))
    try:
        assert source.total == 2
        first = [request.prompt for _, request in source.requests()]
        again = [request.prompt for _, request in source.requests()]
        assert first == again == ["a banana", "a moon"]
    finally:
        source.close()


def test_standard_input_is_read_twice_from_a_copy(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    source = BatchInput.open("-")
    try:
        assert (source.name, source.total) == ("stdin", 2)
        assert [request.prompt for _, request in source.requests()] == ["one", "two"]
    finally:
        source.close()


def test_poll_interval_and_max_polls_are_a_count_of_polls():
    assert poll_schedule(None, None) is None  # the client's own schedule
    assert poll_schedule(0.5, 4) == PollCount(interval=0.5, max_polls=4)
    assert poll_schedule(None, 2) == PollCount(interval=3.0, max_polls=2)
    assert poll_schedule(0.5, None) == PollCount(interval=0.5, max_polls=60)


class _FakeJob:
    """A job whose generation is still processing for ``processing`` refreshes."""

    def __init__(self, processing: int) -> None:
        self.id = "g1"
        self.refreshes = 0
        self.processing = processing

    async def refresh(self) -> Generation:
        self.refreshes += 1
        done = self.refreshes > self.processing
        status = GenerationStatus.COMPLETED if done else GenerationStatus.PROCESSING
        return Generation(
            id=self.id, status=status, image_urls=("https://cdn/x.png",) if done else ()
        )


@pytest.mark.parametrize(("resumed", "first"), [(True, 0.0), (False, 0.5)])
async def test_max_polls_sends_exactly_that_many_polls_then_times_out(resumed, first):
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    job = _FakeJob(processing=10)
    with pytest.raises(nanobanana.JobTimeoutError) as info:
        await wait_for_job(
            job,
            PollCount(interval=0.5, max_polls=2),
            resumed=resumed,
            sleep=sleep,  # type: ignore[arg-type]
        )
    assert job.refreshes == 2
    assert slept == [first, 0.5]  # a resumed job is polled at once, a new one after 0.5 s
    assert info.value.generation_id == "g1"

    done = _FakeJob(processing=1)
    generation = await wait_for_job(
        done,
        PollCount(interval=0.5, max_polls=2),
        resumed=True,
        sleep=sleep,  # type: ignore[arg-type]
    )
    assert (generation.status, done.refreshes) == (GenerationStatus.COMPLETED, 2)


class _FlakyJob(_FakeJob):
    """A job whose first ``failures`` refreshes fail with a 429 (its retries spent)."""

    def __init__(self, processing: int, failures: int) -> None:
        super().__init__(processing)
        self.failures = failures

    async def refresh(self) -> Generation:
        if self.failures:
            self.failures -= 1
            self.refreshes += 1
            raise nanobanana.RateLimitError(
                "429", response=httpx.Response(429), body={}, retry_after=2.0, limit=1, active=1
            )
        return await super().refresh()


async def test_a_failed_poll_uses_up_one_poll_and_the_next_waits_its_retry_after():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    job = _FlakyJob(processing=0, failures=2)
    generation = await wait_for_job(
        job,
        PollCount(interval=0.5, max_polls=3),
        resumed=True,
        sleep=sleep,  # type: ignore[arg-type]
    )
    assert generation.status is GenerationStatus.COMPLETED
    assert slept == [0.0, 2.0, 2.0]

    always = _FlakyJob(processing=0, failures=5)
    with pytest.raises(nanobanana.JobTimeoutError, match="could not be polled") as info:
        await wait_for_job(
            always,
            PollCount(interval=0.5, max_polls=3),
            resumed=True,
            sleep=sleep,  # type: ignore[arg-type]
        )
    assert always.refreshes == 3
    assert isinstance(info.value.__cause__, nanobanana.RateLimitError)


@pytest.mark.parametrize(
    ("argv", "kept"),
    [
        (["--api-key", "nb_k", "batch", "f"], ["batch", "f"]),
        (["batch", "f", "--api-key=nb_k", "-o", "o"], ["batch", "f", "-o", "o"]),
        (["--api-k", "nb_k", "batch", "f"], ["batch", "f"]),  # argparse takes prefixes
        (["--api=nb_k", "batch", "f"], ["batch", "f"]),
        (["batch", "f", "--aspect-ratio", "1:1"], ["batch", "f", "--aspect-ratio", "1:1"]),
    ],
)
def test_printed_commands_leave_the_api_key_out(argv, kept):
    assert without_api_key(argv) == kept


def test_the_librarys_python_advice_becomes_cli_commands():
    error = nanobanana.APIConnectionError("Connection dropped", may_have_been_charged=True)
    assert CHARGE_WARNING in str(error)
    message = message_for(error)
    assert "credits()" not in message
    assert "`nanobanana credits`" in message
    assert "poll" not in message  # no id known
    # With an id (from the command, or on the error itself), the poll command too.
    assert "`nanobanana poll --id g7`" in message_for(error, generation_id="g7")
    error.generation_id = "g8"  # type: ignore[attr-defined] - the library may add it
    assert "`nanobanana poll --id g8`" in message_for(error)
    assert error_json(error)["generation_id"] == "g8"
    cut = nanobanana.SSETooLargeError(
        "Too large. Generation g9 goes on: fetch it with client.job('g9').wait()."
    )
    assert message_for(cut).endswith("fetch it with `nanobanana poll --id g9 --wait`.")


@pytest.mark.parametrize(
    ("line", "kind"), [('["a"]', "JSON an array"), ('"a banana"', "JSON a string")]
)
def test_a_json_line_that_is_not_an_object_is_a_usage_error(line, kind):
    with pytest.raises(InputError, match="line 2") as info:
        parse_items(["ok", line], name="prompts.txt")
    assert kind in str(info.value)
    # Text that only looks like it is a prompt as written.
    items = parse_items(["[draft] a cat", '"quoted" words'], name="f")
    assert [item.prompt for _, item in items] == ["[draft] a cat", '"quoted" words']


def test_the_download_dir_is_created_or_refused_before_anything_is_sent(tmp_path):
    check_download_dir(str(tmp_path / "new" / "deep"))
    assert (tmp_path / "new" / "deep").is_dir()
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        check_download_dir(str(afile))
    with pytest.raises(UsageError, match="cannot create"):
        check_download_dir(str(afile / "below"))


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--generation-time", "-1"],
        ["simulate", "--generation-time", "2-1"],
        ["simulate", "--generation-time", "1-3@9"],
        ["simulate", "--generation-time", "soon"],
        ["simulate", "--simulate"],
        ["--max-credits", "-1", "credits"],
        ["credits", "--max-credits", "many"],
        ["simulate", "--port", "99999"],
        ["simulate", "--cdn-port", "-1"],
        ["simulate", "--credits", "-5"],
        ["simulate", "--heartbeat-interval", "0"],
        ["simulate", "--max-async-tasks", "0"],
    ],
)
def test_bad_simulator_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_simulate_passes_its_options_to_a_simulator_that_accepts_them(monkeypatch):
    import nanobanana.testing  # noqa: PLC0415
    from nanobanana.testing import GenerationTime, Simulator  # noqa: PLC0415

    seen: dict[str, object] = {}

    def fake_serve(*, host: str, port: int, **options: object) -> None:
        seen.update(options, host=host, port=port)
        Simulator(host=host, port=port, **options)  # type: ignore[arg-type] - never started

    monkeypatch.setattr(nanobanana.testing, "serve", fake_serve)
    argv = ["simulate", "--port", "0", "--heartbeat-interval", "0.5", "--max-async-tasks", "3"]
    assert main([*argv, "--credits", "0", "--generation-time", "0"]) == 0
    assert seen["heartbeat_interval"] == 0.5
    assert seen["max_async_tasks"] == 3
    assert (seen["credits"], seen["generation_time"], seen["port"]) == (
        0,
        GenerationTime.fixed(0),
        0,
    )
    assert main([*argv, "--generation-time", "0.5-2", "--seed", "4"]) == 0
    assert seen["generation_time"] == GenerationTime(low=0.5, high=2.0)
    assert seen["seed"] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--base-url", "ftp://example.test", "credits"], "base_url"),
        (["generate", "a", "--prompt", "b"], "give the prompt once"),
        (["generate", "a", "--mode", "async", "--download-dir", "d"], "add --wait"),
        (["credits", "--max-retries", "-1"], "--max-retries"),
    ],
)
def test_usage_mistakes_found_after_parsing_exit_2_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert message in err


def test_main_uses_the_json_error_document_on_request(capsys):
    assert main(["--json", "generate", ""]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["exit_code"] == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_rich_a_terminal_gets_plain_lines_and_quiet_gets_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # as if the extra is missing
    err = _Terminal()
    output = Output(stderr=err)
    progress = reporter(output, "percent", title="generating")
    assert isinstance(progress, PlainReporter)
    with progress:
        progress.update(50, message="Processing...")
        progress.update(0, message="Processing...")  # a heartbeat: nothing new to say
        progress.update(75, message="Finishing...")
    assert err.getvalue().splitlines() == [
        "generating",
        "[ 50%] Processing...",
        "[ 75%] Finishing...",
    ]
    quiet = reporter(Output(quiet=True, stderr=err), "percent")
    assert type(quiet) is Reporter


def test_batch_options_map_the_command_line_onto_client_batch():
    parser = _app.build_parser()
    args = parser.parse_args(["batch", "f", "-o", "out.jsonl", "--model", "m", "--quantity", "2"])
    options = _batch_options(args)
    assert options["journal"] == "out.jsonl"
    assert (options["model"], options["quantity"], options["mode"]) == ("m", 2, "async")
    assert "poll_policy" not in options  # the client's own schedule
    assert "item_timeout" not in options  # the library's default

    # The service CLI's schedule: every S seconds, N polls at most; the item's
    # deadline leaves time to save the images after the last poll.
    args = parser.parse_args(["batch", "f", "--poll-interval", "10", "--max-polls", "100"])
    options = _batch_options(args)
    policy = options["poll_policy"]
    assert (policy.first_delay, policy.max_interval, policy.growth) == (10.0, 10.0, 1.0)
    assert policy.timeout == 1000.0
    assert options["item_timeout"] == 1300.0
    args = parser.parse_args(["batch", "f", "--item-timeout", "5", "--concurrency", "3"])
    assert _batch_options(args)["item_timeout"] == 5.0
    assert args.concurrency == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["batch", "f", "--concurrency", "0"])


def test_the_generation_document_says_when_its_image_urls_expire():
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    completed = Generation(id="g", status=GenerationStatus.COMPLETED, created_at=created)
    document = generation_json(completed)
    assert document["expires_at"] == "2025-01-17T03:04:05+00:00"  # created_at + 15 days
    unknown = Generation(id="g", status=GenerationStatus.PROCESSING)
    assert generation_json(unknown)["expires_at"] is None
