"""Downloading generated images: whole files only, our names only, the key never sent.

Rules, from PROTOCOL.md (Images) and the service's agent notes:

- Image URLs point at a CDN, not the API: the ``Authorization`` header is never sent
  with them. Download requests are built here from scratch (not with
  ``http_client.build_request``, which would merge a borrowed client's default
  headers) and sent with ``auth=None``; redirects are followed by hand, so no hop can
  pick the key up either.
- "Some CDN URLs reject Python's default urllib User-Agent with 403": every request
  sends the client's own ``User-Agent``.
- File names are ours: ``<sanitised generation id>-<index>.<ext>``, with the extension
  from the file's first bytes. Nothing the server sends can choose a directory.
- Each body is streamed to a temporary file in the target folder and renamed into
  place with ``os.replace`` (atomic on one file system), so a failure or cancellation
  never leaves a partial image under the final name (``nanobanana._saving``).
- Errors are all `DownloadError` (transport failures included, chained to the
  httpx error; file-system ones too, such as a file where the folder should be or
  a directory under an image's name, chained to the `OSError`), so one ``except``
  covers a download; its ``url`` and message never carry the URL's query string,
  where signed URLs keep their signature.
- A transient failure (5xx, 429, a dropped or cut connection) is retried as a read
  (the table in ``nanobanana._retry`` decides), with the client's backoff. So is a
  body that is no image (an HTML page answered 200, an empty body): what the CDN
  says in ``Content-Type`` is not trusted either way, the first bytes decide. And so
  is a body without ``Content-Length`` or chunked coding that stops before its
  image's end: the end of the connection delimits such a body, so a cut one looks
  whole to HTTP (``nanobanana._images.cut_short``).
- The images were paid for, so a transient failure is retried until the image's
  deadline (``timeout``, by default the client's ``RetryPolicy.timeout``), not for a
  count of attempts: at 30 % of CDN answers failing, four attempts would still lose
  one image in a hundred (0.3 ** 4). Only without any deadline does the policy's
  ``attempts`` bound it. The deadline also cancels the attempt under way, so a body
  trickled in (each piece within the read timeout) cannot outlast it.
- An error says what is needed to recover: the generation's id, the paths saved and
  the URLs not saved; when the link is gone (403, 404, 410), whether the 15 days of
  the URLs have passed (``Generation.expires_at``) and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx

from nanobanana._errors import DownloadError
from nanobanana._filenames import plan_files, safe_stem
from nanobanana._images import image_extension
from nanobanana._models import Generation
from nanobanana._retry import (
    Outcome,
    RequestKind,
    decide,
    outcome_of_status,
    parse_retry_after,
)
from nanobanana._saving import TransientError, os_reason, save, transport_error
from nanobanana._transport import ABORT_ON_DISCARD

if TYPE_CHECKING:
    from nanobanana._client import AsyncNanoBanana

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_REDIRECTS",
    "DownloadLimit",
    "download",
    "image_extension",
    "safe_stem",
]

DEFAULT_MAX_SIZE = 50 * 1024 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({403, 404, 410})
# Backoff grows as base ** retries: past this many retries it is at its ceiling anyway,
# and a float power of a huge count would overflow.
_MAX_BACKOFF_STEP = 64


def _redact(url: httpx.URL) -> str:
    """The URL without credentials, query or fragment: safe for messages and logs."""
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}{url.path}"


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        shown = url.split("?", maxsplit=1)[0].split("#", maxsplit=1)[0]
        raise DownloadError(f"Not a valid image URL: {shown[:80]!r}", url=shown) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DownloadError(f"Not an http(s) image URL: {_redact(parsed)}", url=_redact(parsed))
    return parsed


class DownloadLimit:
    """``download_concurrency``: one per client, shared by its ``with_options()`` copies.

    The copies share the connection pool, so they share this bound on the downloads
    that go through it too. The semaphore is made on first use, inside the event loop
    (a client is used in one loop only: ``Requester._check_usable``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._semaphore: anyio.Semaphore | None = None

    def semaphore(self) -> anyio.Semaphore:
        """The semaphore that admits ``limit`` downloads at a time."""
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.limit)
        return self._semaphore


async def download(
    client: AsyncNanoBanana,
    generation_or_url: Generation | str | Sequence[str],
    dest: str | os.PathLike[str],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float | None = None,  # noqa: ASYNC109 - a budget for retries, not one wait
) -> list[Path]:
    """Write each image to ``dest`` and return the paths, in the order of the URLs.

    All images are fetched (a bounded number at a time) even when one fails; the
    first failure is then raised, and the images that did arrive stay, whole (the
    error's ``saved`` lists them, its ``unsaved_urls`` the others).
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError("max_size must be a positive number of bytes")
    if timeout is None:
        timeout = client.retry_policy.timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError("timeout must be a number of seconds, 0 or more, or None")
    urls_and_stems = plan_files(generation_or_url)
    generation = generation_or_url if isinstance(generation_or_url, Generation) else None
    report = _Report(
        generation_id=(generation.id or None) if generation is not None else None,
        expires_at=generation.expires_at if generation is not None else None,
        urls=tuple(url for url, _stem in urls_and_stems),
    )
    try:
        plan = [(_parse_url(url), stem) for url, stem in urls_and_stems]
    except DownloadError as exc:
        raise report.finish(exc, client, saved=[]) from None
    # Closed client, or one first used in another event loop: the API's own errors.
    client._requester._check_usable()
    target = anyio.Path(dest)
    try:
        await target.mkdir(parents=True, exist_ok=True)
        folder = Path(await target.resolve())
    except OSError as exc:  # a file where the folder should be, no permission, ...
        shown = _redact(plan[0][0]) if plan else ""
        reason = (
            "it exists and is not a folder" if isinstance(exc, FileExistsError) else os_reason(exc)
        )
        error = DownloadError(f"Cannot save images in {os.fspath(dest)!r}: {reason}.", url=shown)
        raise report.finish(error, client, saved=[]) from exc
    limiter = client._download_limit.semaphore()
    paths: list[Path | None] = [None] * len(plan)
    errors: list[tuple[int, Exception]] = []

    async def one(index: int, url: httpx.URL, stem: str) -> None:
        try:
            paths[index] = await _fetch_with_retries(
                client,
                limiter=limiter,
                url=url,
                folder=folder,
                stem=stem,
                max_size=max_size,
                budget=timeout,
                generation_id=report.generation_id,
            )
        except Exception as exc:  # noqa: BLE001 - kept and re-raised below, first by index
            errors.append((index, exc))

    if len(plan) == 1:
        await one(0, *plan[0])
    else:
        async with anyio.create_task_group() as group:
            for index, (url, stem) in enumerate(plan):
                group.start_soon(one, index, url, stem)
    if errors:
        first = min(errors, key=lambda item: item[0])[1]
        if isinstance(first, DownloadError):
            raise report.finish(first, client, saved=paths)
        raise first
    return [path for path in paths if path is not None]


class _Report:
    """What a `DownloadError` of one ``download()`` call says about the whole call."""

    def __init__(
        self, *, generation_id: str | None, expires_at: datetime | None, urls: tuple[str, ...]
    ) -> None:
        self.generation_id = generation_id
        self.expires_at = expires_at
        self.urls = urls

    def finish(
        self, error: DownloadError, client: AsyncNanoBanana, *, saved: Sequence[Path | None]
    ) -> DownloadError:
        """``error`` with the call's recovery fields set and the expiry explained."""
        done = list(saved) + [None] * (len(self.urls) - len(saved))
        error.generation_id = self.generation_id
        error.saved = tuple(path for path in done if path is not None)
        error.unsaved_urls = tuple(
            url for url, path in zip(self.urls, done, strict=True) if path is None
        )
        advice = self._advice(error, client)
        if advice:
            error.message = f"{error.message} {advice}"
            error.args = (error.message,)
        return error

    def _advice(self, error: DownloadError, client: AsyncNanoBanana) -> str:
        expires = self.expires_at
        gone = error.status_code in _GONE
        if expires is None:
            if not gone:
                return ""
            # The usual reason on a CDN: the link is older than its 15 days (overview docs).
            return (
                "Image URLs expire 15 days after the generation; an older link cannot be "
                "downloaded any more: generate the image again."
            )
        now = datetime.fromtimestamp(client._clock.time(), tz=timezone.utc)
        when = expires.isoformat(timespec="seconds")
        if now >= expires:
            return (
                f"The image URLs expired at {when} (15 days after the generation was "
                "created) and cannot be downloaded any more: generate the image again."
            )
        if not gone:
            return ""
        which = f"client.job({self.generation_id!r}).wait()" if self.generation_id else ""
        fetch = f"fetch the generation again ({which}) for its current URLs, or " if which else ""
        return (
            f"By this machine's clock the URL has not expired (it is valid until {when}): "
            f"{fetch}try again later."
        )


async def _fetch_with_retries(
    client: AsyncNanoBanana,
    *,
    limiter: anyio.Semaphore,
    url: httpx.URL,
    folder: Path,
    stem: str,
    max_size: int,
    budget: float | None,
    generation_id: str | None,
) -> Path:
    policy = client.retry_policy
    clock = client._clock
    deadline: float | None = None
    retries = 0
    last: DownloadError | None = None
    while True:
        try:
            async with limiter:
                if deadline is None and budget is not None:
                    # From the first attempt on: the wait for a download slot does not
                    # count, or images queued behind others would time out untried.
                    deadline = clock.monotonic() + budget
                # The deadline bounds the attempt under way too, not only the wait
                # before the next one: a CDN that trickles the body (each byte in
                # time for the read timeout) is given up at the deadline. The rest of
                # this attempt is cancelled: its response closed, its .part removed.
                # (timeout=0 is one attempt, bounded by the HTTP timeouts only.)
                remaining = None
                if deadline is not None and budget:
                    remaining = deadline - clock.monotonic()
                with anyio.move_on_after(remaining):
                    return await _fetch_once(client, url, folder, stem, max_size)
            if last is not None:
                # What kept failing says more than the cut-off attempt: keep it.
                last.message = (
                    f"{last.message} Still failing when the download timeout of {budget:g} s "
                    f"ran out, during attempt {retries + 1}."
                )
                last.args = (last.message,)
                raise last from last.__cause__
            shown = _redact(url)
            raise DownloadError(
                f"Image {shown}: not received within the download timeout of {budget:g} s.",
                url=shown,
            )
        except TransientError as transient:
            error = last = transient.error
            if not decide(RequestKind.READ, transient.outcome).retry:
                raise error from error.__cause__
            retries += 1
            if deadline is None and retries >= policy.attempts:
                raise error from error.__cause__
            wait = transient.retry_after
            if wait is None:
                wait = policy.backoff(min(retries, _MAX_BACKOFF_STEP), client._rand)
            if deadline is not None and clock.monotonic() + wait > deadline:
                raise error from error.__cause__
            client._recorder.download_retrying(
                error.url,
                retries,
                transient.outcome,
                wait,
                status=error.status_code,
                generation_id=generation_id,
            )
        await clock.sleep(wait)


async def _fetch_once(
    client: AsyncNanoBanana, url: httpx.URL, folder: Path, stem: str, max_size: int
) -> Path:
    http = client.http_client
    shown = _redact(url)
    # identity: images are compressed already, and a gzip-encoded body would be
    # inflated a whole network read at a time, ahead of the max_size check.
    headers = {
        "User-Agent": client.user_agent,
        "Accept": "image/*,*/*;q=0.8",
        "Accept-Encoding": "identity",
    }
    for _hop in range(MAX_REDIRECTS + 1):
        # A CDN connection holds no slot of the account, so one closed early (an error,
        # max_size, a cancellation, the deadline) is dropped at once: no graceful
        # close to wait for, as an API request's connection has.
        request = httpx.Request("GET", url, headers=headers, extensions={ABORT_ON_DISCARD: True})
        try:
            response = await http.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.HTTPError as exc:
            raise transport_error(exc, shown) from exc
        try:
            status = response.status_code
            if status in _REDIRECTS and "location" in response.headers:
                url = _redirect_target(url, response.headers["location"], shown)
                shown = _redact(url)
                continue
            if status >= 300:
                raise _status_error(client, response, shown)
            return await save(response, folder, stem, max_size, shown)
        finally:
            await response.aclose()
    raise DownloadError(
        f"Image {shown}: more than {MAX_REDIRECTS} redirects.", url=shown, status_code=None
    )


def _redirect_target(url: httpx.URL, location: str, shown: str) -> httpx.URL:
    try:
        target = url.join(location)
    except httpx.InvalidURL:
        raise DownloadError(f"Image {shown}: redirect to an invalid URL.", url=shown) from None
    if target.scheme not in ("http", "https") or not target.host:
        raise DownloadError(f"Image {shown}: redirect to a non-http(s) URL.", url=shown)
    return target


def _status_error(
    client: AsyncNanoBanana, response: httpx.Response, shown: str
) -> DownloadError | TransientError:
    status = response.status_code
    text = f"Image {shown}: {status} {response.reason_phrase or 'error'}."
    error = DownloadError(text, url=shown, status_code=status)
    if status in _GONE:
        return error  # not retried; `_Report` explains the expiry
    outcome = outcome_of_status(status)
    if outcome is Outcome.CLIENT_ERROR:
        return error
    retry_after = parse_retry_after(
        response.headers.get("retry-after"),
        now=client._clock.time(),
        cap=client.retry_policy.retry_after_max,
    )
    return TransientError(error, outcome, retry_after)
