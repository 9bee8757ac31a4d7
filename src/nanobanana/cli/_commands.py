"""The single-generation commands: ``models``, ``credits``, ``generate``, ``poll``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana._errors import (
    DownloadError,
    GenerationFailedError,
    NanoBananaError,
    UnexpectedResponseError,
)
from nanobanana._models import GenerationStatus
from nanobanana.cli._exit import ExitCode, SaveError
from nanobanana.cli._output import error_json, generation_json, job_json, model_json
from nanobanana.cli._polling import wait_for_job
from nanobanana.cli._progress import finish, reporter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import httpx

    from nanobanana._client import AsyncNanoBanana
    from nanobanana._jobs import Job
    from nanobanana._models import Generation
    from nanobanana.cli._session import Session

__all__ = [
    "cmd_credits",
    "cmd_generate",
    "cmd_models",
    "cmd_poll",
    "deliver",
    "download",
    "generation_options",
    "run_stream",
    "run_sync",
    "wait_job",
]


async def cmd_models(session: Session, client: AsyncNanoBanana) -> int:
    """``nanobanana models``: the live catalogue (no key needed)."""
    models = await client.models()
    session.output.emit([model_json(model) for model in models])
    return ExitCode.OK


async def cmd_credits(session: Session, client: AsyncNanoBanana) -> int:
    """``nanobanana credits``: the account's balance."""
    session.output.emit({"credits": await client.credits()})
    return ExitCode.OK


def generation_options(args: Any) -> dict[str, Any]:
    """The keyword arguments of ``client.generate()`` and friends, from parsed options."""
    return {
        "model": args.model,
        "reference_image_urls": args.reference_image_urls or None,
        "aspect_ratio": args.aspect_ratio,
        "quantity": args.quantity,
    }


async def cmd_generate(session: Session, client: AsyncNanoBanana) -> int:
    """``nanobanana generate``: one generation in sync, stream or async mode."""
    args = session.args
    prompt: str = args.prompt
    options = generation_options(args)
    if args.mode == "sync":
        generation = await run_sync(session, client, prompt, options)
    elif args.mode == "stream":
        generation = await run_stream(session, client, prompt, options)
    else:
        job = await client.submit(prompt, **options)
        session.track(job.id)
        if not args.wait:
            session.output.info(
                f"submitted generation {job.id}; wait for it with: {session.poll_command(job.id)}"
            )
            session.untrack(job.id)
            session.output.emit(job_json(job, prompt=prompt, model=args.model))
            return ExitCode.OK
        generation = await wait_job(session, client, job, resumed=False)
        generation = attrs.evolve(
            generation,
            credits_used=_first(generation.credits_used, job.credits_used),
            remaining_credits=_first(generation.remaining_credits, job.remaining_credits),
        )
    return await deliver(session, client, generation)


async def cmd_poll(session: Session, client: AsyncNanoBanana) -> int:
    """``nanobanana poll --id ID [--wait]``: a generation's state, or wait for it."""
    args = session.args
    job = client.job(args.id)
    if args.wait:
        generation = await wait_job(session, client, job, resumed=True)
    else:
        generation = await job.refresh()
    if generation.status is GenerationStatus.FAILED:
        # Print the document too: it is the answer to "what happened to ID?".
        session.output.emit(generation_json(generation))
        reason = generation.error_message or "no reason given"
        error = GenerationFailedError(
            f"generation {generation.id} failed: {reason}", generation_id=generation.id
        )
        return session.output.fail(error, document=False)
    return await deliver(session, client, generation)


async def deliver(session: Session, client: AsyncNanoBanana, generation: Generation) -> int:
    """Save the images (with ``--download-dir``) and print the generation.

    The generation was paid for: if saving fails, the document is printed all the
    same (``files``: those that were saved), with the command that saves them all, and the
    command exits 6. With ``--json`` the one document also carries the ``error``.
    """
    session.downloading[generation.id] = None  # Ctrl-C now says how to save them later
    try:
        files = await download(session, client, generation)
    except (DownloadError, OSError) as exc:
        session.downloading.pop(generation.id, None)  # the hint is given here instead
        error = exc if isinstance(exc, DownloadError) else _save_error(session, exc)
        saved = exc.saved if isinstance(exc, DownloadError) else ()
        document = generation_json(generation, files=list(saved))
        if session.output.json_mode:
            document["error"] = error_json(error, generation_id=generation.id)
        session.output.emit(document)
        hint = (
            f"generation {generation.id} completed and is paid for; save its images with: "
            f"{session.poll_command(generation.id, wait=False)}"
        )
        return session.output.fail(error, hints=[hint], document=False, generation_id=generation.id)
    # Not in a `finally`: Ctrl-C cancels this task before `main` reports the interrupt,
    # and the id must still be here then, or the user loses what was paid for.
    session.downloading.pop(generation.id, None)
    session.output.emit(generation_json(generation, files=files))
    return ExitCode.OK


def _save_error(session: Session, exc: OSError) -> SaveError:
    directory = getattr(session.args, "download_dir", None)
    error = SaveError(f"cannot save the images in {directory}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error


async def run_sync(
    session: Session, client: AsyncNanoBanana, prompt: str, options: dict[str, Any]
) -> Generation:
    """A sync generation (10-60 s), with a spinner and the elapsed time on a terminal."""
    progress = reporter(session.output, "wait", title="generating (sync mode)")
    with session.anonymous(), progress:
        generation = await client.generate(prompt, **options)
        finish(progress, f"generated {generation.id}")
    return generation


async def run_stream(
    session: Session, client: AsyncNanoBanana, prompt: str, options: dict[str, Any]
) -> Generation:
    """A stream-mode generation, its progress on a bar that never moves backwards."""
    progress = reporter(session.output, "percent", title="generating (stream mode)")
    generation: Generation | None = None
    known_id: str | None = None
    try:
        with session.anonymous(), progress:
            async with client.stream(prompt, **options) as events:
                async for event in events:
                    if event.generation_id and known_id is None:
                        known_id = event.generation_id
                        session.track(known_id)
                    if event.type == "complete":
                        generation = event.generation
                        progress.update(100, message=event.message or "complete")
                        finish(progress)
                    elif event.is_heartbeat:
                        progress.update(event.progress)
                    else:
                        progress.update(event.progress, message=event.message)
    except NanoBananaError:
        if known_id is not None:
            session.untrack(known_id)
        raise
    if generation is None:
        raise UnexpectedResponseError("The stream ended without a result.")
    session.untrack(known_id or generation.id)
    return generation


@contextmanager
def _count_polls(client: AsyncNanoBanana, generation_id: str, on_poll: Any) -> Iterator[None]:
    """Call ``on_poll(n)`` as each poll of ``generation_id`` is sent (an httpx hook)."""
    polls = 0

    async def hook(request: httpx.Request) -> None:
        nonlocal polls
        if request.method == "GET" and request.url.params.get("id") == generation_id:
            polls += 1
            on_poll(polls)

    hooks = client.http_client.event_hooks["request"]
    hooks.append(hook)
    try:
        yield
    finally:
        hooks.remove(hook)


async def wait_job(
    session: Session, client: AsyncNanoBanana, job: Job, *, resumed: bool
) -> Generation:
    """Wait for an async generation, showing the elapsed time and the poll count.

    ``resumed``: the id comes from an earlier command (``poll``), so poll at once.
    """
    schedule = session.poll_schedule()
    session.track(job.id)
    progress = reporter(session.output, "wait", title=f"waiting for {job.id}")

    def on_poll(polls: int) -> None:
        progress.update(message=f"waiting for {job.id}", detail=f"poll {polls}")

    try:
        with progress, _count_polls(client, job.id, on_poll):
            generation = await wait_for_job(job, schedule, resumed=resumed)
            finish(progress, f"completed {job.id}")
    except NanoBananaError:
        session.untrack(job.id)  # its failure or timeout is reported with the next step
        raise
    session.untrack(job.id)
    return generation


async def download(session: Session, client: AsyncNanoBanana, generation: Generation) -> list[Path]:
    """Download the images when ``--download-dir`` was given."""
    directory = getattr(session.args, "download_dir", None)
    if directory is None or not generation.image_urls:
        return []
    files = await client.download(generation, directory)
    for path in files:
        session.output.info(f"saved {path}")
    return files


def _first(*values: int | None) -> int | None:
    for value in values:
        if value is not None:
            return value
    return None
