"""What a new user meets first: help, the missing key, the spend cap, the simulator's options."""

from __future__ import annotations

import json

import pytest

from nanobanana._config import API_KEY_ENV_VARS
from nanobanana.cli import _app, main
from nanobanana.cli._exit import EXIT_CODES_HELP
from nanobanana.cli._output import Output
from nanobanana.testing import Simulator

COMMANDS = ("models", "credits", "generate", "poll", "batch", "simulate")


def _help(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_global_options_and_exit_codes_are_shown_once_in_the_main_help(capsys):
    text = _help(capsys=capsys)
    assert text.count("--api-key KEY") == 2  # the usage line and its description
    assert "global options:" in text
    assert "--max-credits N" in text
    assert EXIT_CODES_HELP in text


@pytest.mark.parametrize("command", COMMANDS)
def test_a_commands_help_shows_its_own_options_and_points_to_the_main_help(command, capsys):
    text = _help(command, capsys=capsys)
    assert "global options" not in text
    assert "exit codes:" not in text
    assert "130" not in text
    for option in ("--base-url", "--timeout", "--max-retries", "--json", "--simulate"):
        assert option not in text.split("\n\n")[0], option  # not in the usage line
    if command != "simulate":
        epilog = " ".join(text.rsplit("\n\n", 1)[1].split())
        assert "`nanobanana --help`" in epilog
        globals_ = _app.build_parser()._action_groups[-1]
        assert globals_.title == "global options"
        for action in globals_._group_actions:  # named from the parser: none forgotten
            assert max(action.option_strings, key=len) in epilog


def test_simulate_offers_its_own_options_not_the_clients(capsys):
    text = _help("simulate", capsys=capsys)
    assert "--simulate" not in text
    assert "--api-key KEY" in text
    assert "the key the simulator accepts" in text
    assert "LOW-HIGH" in text


def test_hidden_global_options_still_work_after_the_command():
    args = _app.build_parser().parse_args(
        ["credits", "--json", "--timeout", "5", "--max-credits", "7", "--simulate"]
    )
    assert (args.json, args.timeout, args.max_credits, args.simulate) == (True, 5.0, 7, True)
    args = _app.build_parser().parse_args(["--max-credits", "3", "credits"])
    assert args.max_credits == 3  # and before it, undisturbed by the command's defaults


def test_simulate_with_simulate_says_why_it_is_refused(capsys):
    assert main(["--simulate", "simulate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: simulate serves a simulator itself")


def _without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_keys(monkeypatch)


def test_a_missing_key_names_the_option_and_the_environment(monkeypatch, capsys):
    for name in ("NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--base-url", "http://127.0.0.1:9/api/v1", "credits"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for named in ("--api-key", "NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY"):
        assert named in err
    assert "api_key=" not in err
    assert "--simulate" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "a cat"],
        ["generate", "a cat", "--mode", "stream"],
        ["generate", "a cat", "--mode", "async", "--wait"],
        ["generate", "a cat", "--mode", "async"],
        ["poll", "--id", "g1", "--wait"],
        ["batch", "PROMPTS"],
    ],
)
@pytest.mark.parametrize("key", [None, " "])
@pytest.mark.usefixtures("no_key_in_the_environment")
def test_a_missing_key_is_the_first_and_only_thing_printed(sim, capsys, tmp_path, argv, key):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    argv = [str(prompts) if word == "PROMPTS" else word for word in argv]
    keys = [] if key is None else ["--api-key", key]
    assert main(["--base-url", sim.base_url, *keys, *argv]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "error: no API key: pass --api-key KEY or set NANOBANANA_API_KEY"
    )
    assert captured.err.count("\n") == 1  # no progress line before it
    assert sim.requests == ()  # found without the network: not even the catalogue

    assert main(["--base-url", sim.base_url, "--json", *keys, *argv]) == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["type"], error["exit_code"]) == ("MissingAPIKeyError", 3)
    # A usage error is still reported first (exit 2), and the batch's file is closed.
    assert main(["--base-url", "ftp://example.test", *keys, *argv]) == 2
    assert "base_url" in capsys.readouterr().err
    # The commands that need no key still run without one.
    assert main(["--base-url", sim.base_url, *keys, "models"]) == 0
    assert main(["--simulate", *keys, "credits"]) == 0


@pytest.fixture
def sim():
    with Simulator(credits=100) as simulator:
        yield simulator


def _cli(sim: Simulator, *argv: str) -> list[str]:
    return ["--base-url", sim.base_url, "--api-key", sim.api_key, *argv]


def test_max_credits_refuses_a_generation_over_it_and_sends_nothing(sim, capsys):
    code = main(_cli(sim, "--max-credits", "2", "generate", "a cat", "--quantity", "3", "--json"))
    captured = capsys.readouterr()
    assert code == 3
    error = json.loads(captured.out)["error"]
    assert (error["type"], error["exit_code"]) == ("BudgetExceededError", 3)
    assert "estimated 3 credits" in error["message"]
    assert "--max-credits 2" in error["message"]
    assert "nothing was sent" in captured.err
    assert not [r for r in sim.requests if r.method == "POST"]
    assert sim.credits() == 100


def test_max_credits_lets_a_generation_within_it_through(sim, capsys):
    code = main(_cli(sim, "generate", "a cat", "--quantity", "2", "--max-credits", "2"))
    assert code == 0
    assert json.loads(capsys.readouterr().out)["credits_used"] == 2
    assert sim.credits() == 98


def test_an_unknown_model_under_max_credits_exits_3_like_the_servers_400(sim, capsys):
    assert main(_cli(sim, "--max-credits", "5", "generate", "a cat", "--model", "nope")) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: unknown model 'nope': `nanobanana models` lists " in err
    assert "nano-banana" in err
    assert not [r for r in sim.requests if r.method == "POST"]
    # Without a cap the server says the same, with its 400.
    assert main(_cli(sim, "generate", "a cat", "--model", "nope")) == 3
    assert "Unknown model: nope" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["a", " ", "nb_1234"])
@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_key_too_short_to_be_real_leaves_the_output_alone(sim, monkeypatch, capsys, key, where):
    _without_keys(monkeypatch)
    assert main(["--base-url", sim.base_url, "models"]) == 0  # models needs no key
    expected = capsys.readouterr().out
    assert "nano-banana" in expected
    assert ", " in expected
    if where == "option":
        argv = ["--base-url", sim.base_url, "--api-key", key, "models"]
    else:
        monkeypatch.setenv("NANOBANANA_API_KEY", key)
        argv = ["--base-url", sim.base_url, "models"]
    assert main(argv) == 0
    assert capsys.readouterr().out == expected  # not every "a", or every space, as ***


@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_real_key_with_whitespace_around_it_is_never_printed(sim, monkeypatch, capsys, where):
    _without_keys(monkeypatch)
    padded = f"  {sim.api_key}\n"  # as pasted; the client strips it
    argv = ["--base-url", sim.base_url, "generate", f"say {sim.api_key}"]
    if where == "option":
        argv = ["--api-key", padded, *argv]
    else:
        monkeypatch.setenv("NANOBANANA_API_KEY", padded)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert sim.api_key not in captured.out + captured.err
    assert json.loads(captured.out)["prompt"] == "say ***"


def test_only_values_long_enough_to_be_keys_are_secrets():
    output = Output()
    for value in ("", " ", "a", "\tnb_1234\n", " nb_12345 ", "nb_12345"):
        output.add_secret(value)
    assert output.secrets == ["nb_12345"]
    assert output.redact("a nb_1234 nb_12345") == "a nb_1234 ***"


def _global_options() -> list[str]:
    [group] = [g for g in _app.build_parser()._action_groups if g.title == "global options"]
    return [max(action.option_strings, key=len) for action in group._group_actions]


# A value each global option accepts; flags take none.
_SAMPLE_VALUES = {
    "--api-key": "nb_simulated_key",
    "--base-url": "http://127.0.0.1:9/api/v1",
    "--timeout": "5",
    "--max-retries": "0",  # 0 is given too, though falsy
    "--max-credits": "0",
    "--redis": "redis://127.0.0.1:9",
}
# What simulate does with the global options it takes (the others are refused).
_SIMULATE_TAKES = {"--api-key", "--quiet"}


@pytest.fixture
def served(monkeypatch):
    """``nanobanana simulate`` serves a real simulator that stops at once; its options."""
    import threading  # noqa: PLC0415

    import nanobanana.testing  # noqa: PLC0415

    real_serve = nanobanana.testing.serve
    calls: list[dict[str, object]] = []
    stop = threading.Event()
    stop.set()

    def serve(**options: object) -> None:
        calls.append(options)
        real_serve(stop=stop, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(nanobanana.testing, "serve", serve)
    return calls


@pytest.mark.parametrize("option", _global_options())
def test_each_global_option_before_simulate_is_used_or_refused(option, served, capsys):
    decided = {*_SAMPLE_VALUES, *_SIMULATE_TAKES, "--json", "--simulate"}
    assert decided >= set(_global_options())  # a new global option: decide what simulate does
    given = [option, _SAMPLE_VALUES[option]] if option in _SAMPLE_VALUES else [option]
    code = main([*given, "simulate", "--port", "0"])
    err = capsys.readouterr().err
    if option in _SIMULATE_TAKES:
        assert code == 0, err
        [options] = served
        if option == "--api-key":
            assert options["api_key"] == "nb_simulated_key"
            assert "API key:  nb_simulated_key" in err
        else:
            assert err == ""  # -q: not even the banner
        return
    assert code == 2
    assert served == []  # refused before anything is served
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert option in err


def test_client_options_before_simulate_are_refused_together_and_after_it_by_argparse(
    served, capsys
):
    argv = ["--max-credits", "3", "--redis", "redis://127.0.0.1:9", "simulate", "--port", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--max-credits" in err
    assert "--redis" in err
    assert "`nanobanana simulate --help`" in err
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--port", "0", "--max-credits", "3"])
    assert info.value.code == 2
    assert "--max-credits" in capsys.readouterr().err
    assert served == []
    assert main(["simulate", "--port", "0"]) == 0
    assert "Nano Banana simulator running" in capsys.readouterr().err
