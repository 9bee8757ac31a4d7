# ruff: noqa: S101 - assert is how pytest tests (the tests/ per-file ignores miss docs/)
"""Run every example in the documentation, so that the docs cannot drift from the code.

Every fenced ``python`` block of every page under ``docs/`` runs as a script in a
fresh interpreter (``python -W error``), in a temporary working directory, with
``NANOBANANA_BASE_URL`` and ``NANOBANANA_API_KEY`` pointing at a running
``nanobanana.testing.Simulator``. So the examples are written the way a user writes
them (``AsyncNanoBanana()`` with no arguments) and really generate, stream, poll and
download.

Markers, on the line before a block (an HTML comment, invisible on the site):

- ``<!-- compile-only: why -->``: only ``compile()`` the block. For examples that need
  what this machine does not have (a web framework, a chat service); say why.
- ``<!-- simulator: {"concurrency_limit": 4} -->``: keyword arguments for the
  simulator this block runs against (JSON).
- ``<!-- pytest -->``: the block is a test module; it runs under ``python -m pytest``
  (with the ``nanobanana`` pytest plugin, as installed) and its tests must pass.

A ``console`` block whose ``nanobanana`` commands all use ``--simulate`` (no key
needed: the CLI embeds its own simulator) runs too: each ``$ `` line in order, in a
shell, in a temporary folder; each must exit 0.

Besides, the error tree of ``docs/errors.md`` must be the one in ``_errors.py``'s
docstring, and every public name must have its reference entry.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOCS = Path(__file__).parent
ROOT = DOCS.parent
VENV_BIN = Path(sys.executable).parent
SCRIPT_TIMEOUT = 50  # seconds; below the 60 s per-test timeout, for a clear failure
ENV_NAMES = (
    "NANOBANANA_API_KEY",
    "NANO_BANANA_API_KEY",
    "NB_API_KEY",
    "NANOBANANA_BASE_URL",
    "NANO_BANANA_BASE_URL",
    "NANOBANANA_REDIS_URL",
)

pytestmark = pytest.mark.timeout(60)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<name>[\w-]+)\s*:?\s*(?P<value>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(DOCS).as_posix()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        lang = info.split(maxsplit=1)[0].lstrip("{.").rstrip("}") if info else ""
        markers: dict[str, str] = {}
        back = i - 1
        while back >= 0 and (marker := _MARKER.match(lines[back])):
            markers[marker["name"]] = marker["value"]
            back -= 1
        start = i + 1
        end = start
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line.removeprefix(indent) for line in lines[start:end]]
        found.append(Block(page, start + 1, lang, "\n".join(body) + "\n", markers))
        i = end + 1
    return found


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _all_blocks(lang: str) -> list[Block]:
    return [block for page in _pages() for block in _blocks(page) if block.lang == lang]


PYTHON_BLOCKS = _all_blocks("python")


def _commands(block: Block) -> list[str]:
    # A trailing backslash continues a command on the next line.
    lines = re.sub(r"\\\n\s*", " ", block.code).splitlines()
    return [line[2:] for line in lines if line.startswith("$ ")]


# A console block runs when every `nanobanana` command in it uses `--simulate`: then
# all its commands (`printf`, `ls`, ...) run in order, in one temporary folder.
CONSOLE_BLOCKS = [
    block
    for block in _all_blocks("console")
    if (cli := [c for c in _commands(block) if c.startswith("nanobanana")])
    and all("--simulate" in c for c in cli)
]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    return env


_BAD_STDERR = (
    "Traceback",
    "Exception ignored",
    "ResourceWarning",
    "Task exception was never retrieved",
    "Task was destroyed but it is pending",
    "was never awaited",
)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    report = (
        f"{what} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert result.returncode == 0, report
    for bad in _BAD_STDERR:
        assert bad not in result.stderr, report


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_example(block: Block, tmp_path: Path) -> None:
    filename = f"{block.page}:{block.line}"
    # Pad so that tracebacks point at the page's own line numbers.
    source = "\n" * (block.line - 1) + block.code
    # Every block must at least compile; fragments may use a top-level await.
    code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if "compile-only" in block.markers:
        assert block.markers["compile-only"], f"{block.id}: say why the block cannot run"
        return
    del code
    script = tmp_path / f"test_{block.page.replace('/', '_')[:-3]}_L{block.line}.py"
    script.write_text(source, encoding="utf-8")
    if "pytest" in block.markers:
        _run_pytest_file(block, script)
        return
    kwargs = json.loads(block.markers.get("simulator") or "{}")
    from nanobanana.testing import Simulator  # noqa: PLC0415

    # The simulator serves from a background thread while the example runs.
    with Simulator(**kwargs) as sim:
        env = _clean_env()
        env["NANOBANANA_BASE_URL"] = sim.base_url
        env["NANOBANANA_API_KEY"] = sim.api_key
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-W", "error", str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
    _check(result, block.id)
    print(result.stdout)  # shown by `pytest -rP`, for a look at what the example printed


def _run_pytest_file(block: Block, script: Path) -> None:
    # The block is a test module, as a user would write it: run it with pytest, with
    # the nanobanana plugin (an entry point) and pytest-asyncio in its default (strict)
    # mode. The one setting is the one pytest-asyncio asks every project to make.
    (script.parent / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n", encoding="utf-8"
    )
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            script.name,
        ],
        cwd=script.parent,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    _check(result, block.id)
    assert " passed" in result.stdout, result.stdout
    print(result.stdout)


@pytest.mark.parametrize("block", CONSOLE_BLOCKS, ids=[b.id for b in CONSOLE_BLOCKS])
def test_console_example(block: Block, tmp_path: Path) -> None:
    for command in _commands(block):
        result = subprocess.run(  # noqa: S602 - the docs' own commands, as a user types them
            command,
            shell=True,
            cwd=tmp_path,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
        _check(result, f"{block.id}: $ {command}")


def test_error_tree_is_the_one_in_the_code() -> None:
    import nanobanana._errors  # noqa: PLC0415

    # The tree: from the line that starts with the root class to the next blank line
    # (whether the docstring shows it as an RST literal block or a fenced one).
    lines = (nanobanana._errors.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "NanoBananaError")
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    tree = textwrap.dedent("\n".join(lines[start:end])).strip().removesuffix("```").strip()
    page = (DOCS / "errors.md").read_text(encoding="utf-8")
    assert tree in page, "docs/errors.md must show the tree of _errors.py's docstring"


def test_every_public_name_has_a_reference_entry() -> None:
    import nanobanana  # noqa: PLC0415

    text = "\n".join(page.read_text(encoding="utf-8") for page in _pages())
    documented = set(re.findall(r"^::: nanobanana\.(\w+)", text, flags=re.MULTILINE))
    missing = sorted(set(nanobanana.__all__) - documented - {"__version__"})
    assert not missing, f"no `::: nanobanana.NAME` entry in docs/ for {missing}"


def test_every_admin_call_of_the_simulator_is_documented() -> None:
    from nanobanana.testing._admin import ROUTES  # noqa: PLC0415

    page = (DOCS / "testing.md").read_text(encoding="utf-8")
    missing = [f"{r.method} {r.path}" for r in ROUTES if f"| `{r.method} {r.path}` |" not in page]
    assert not missing, f"admin calls missing from the table in docs/testing.md: {missing}"


def test_the_examples_were_found() -> None:
    # A broken fence parser would make every example test vanish silently.
    assert len(PYTHON_BLOCKS) >= 10
    assert all(block.code.strip() for block in PYTHON_BLOCKS)


def test_every_cli_exit_code_is_documented() -> None:
    from nanobanana.cli._exit import ExitCode  # noqa: PLC0415

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", page, flags=re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}
