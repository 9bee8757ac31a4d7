"""Developer sessions: `nox` runs tests, lint, typecheck and docs; `nox -s bench` measures."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return nox.project.dependency_groups(PYPROJECT, name)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (unit, simulator, end to end, CLI)."""
    session.install("-e", ".[cli,sim,speedups,http2]", *_group("test"))
    session.run("pytest", *(session.posargs or ["-p", "no:cacheprovider", "-q"]))


@nox.session
def coverage(session: nox.Session) -> None:
    """The test suite under coverage (not in the default run: it costs about a third more)."""
    session.install("-e", ".[cli,sim,speedups,http2]", *_group("test"))
    # `coverage run` rather than pytest-cov: our pytest plugin (an entry point) imports
    # nanobanana before pytest-cov starts, which hid every module-level line; and
    # `patch = subprocess` (pyproject) measures the CLI tests' subprocesses too.
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *(session.posargs or ["-p", "no:cacheprovider"]))
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[cli,sim]", *_group("typecheck"))
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation strictly and run every code block in it."""
    session.install("-e", ".[cli,sim]", *_group("docs"), *_group("test"))
    # Each example runs in a fresh interpreter against its own simulator: independent,
    # so they run on every core (3 min -> 1.7 min on 2 cores).
    session.run("pytest", "-p", "no:cacheprovider", "-n", "auto", "docs/test_docs.py", "-q")
    session.run("mkdocs", "build", "--strict", "--site-dir", session.create_tmp() + "/site")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against raw httpx and aiohttp (never part of the default run)."""
    session.install("-e", ".[cli,sim,speedups,redis]", *_group("bench"))
    # bench_fleet.py starts its own redis-server (on PATH) and reuses the tests' helper.
    scripts = [
        "bench_generate.py",
        "bench_stream.py",
        "bench_import.py",
        "bench_ergonomics.py",
        "bench_delivery.py",
        "bench_async.py",
        "bench_fleet.py",
        "bench_batch.py",
    ]
    for script in (f"benchmarks/{name}" for name in scripts):
        session.run("python", script, *session.posargs)
