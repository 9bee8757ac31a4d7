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
  never leaves a partial image under the final name.
- Errors are all `DownloadError` (transport failures included, chained to the
  httpx error; file-system ones too, such as a file where the folder should be or
  a directory under an image's name, chained to the `OSError`), so one ``except``
  covers a download; its ``url`` and message never carry the URL's query string,
  where signed URLs keep their signature.
- A transient failure (5xx, 429, a dropped connection) is retried with the client's
  `RetryPolicy`, as a read: the table in ``nanobanana._retry`` decides.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
import httpx

from nanobanana._errors import DownloadError
from nanobanana._models import Generation, GenerationStatus
from nanobanana._retry import (
    Outcome,
    RequestKind,
    decide,
    outcome_of_exception,
    outcome_of_status,
    parse_retry_after,
)

if TYPE_CHECKING:
    from nanobanana._client import AsyncNanoBanana

__all__ = ["DEFAULT_MAX_SIZE", "MAX_REDIRECTS", "download", "image_extension", "safe_stem"]

DEFAULT_MAX_SIZE = 50 * 1024 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({403, 404, 410})
_SNIFF = 16
_MAX_STEM = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation

# One semaphore per client, made on first use (inside its event loop): the client
# itself is not ours to edit, and a weak map lets a closed client go.
_limiters: weakref.WeakKeyDictionary[AsyncNanoBanana, anyio.Semaphore] = weakref.WeakKeyDictionary()


def image_extension(head: bytes) -> str | None:
    """The file extension for an image's first bytes, or None when they are no image."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def safe_stem(generation_id: str) -> str:
    """A file-name stem from a generation id that cannot leave the target folder.

    Only ``[A-Za-z0-9._-]`` survives, with no leading dot (no ``..``, no hidden
    file). An id that had to change gets a short hash of the original appended, so
    two ids that sanitise alike still get different names.
    """
    stem = _UNSAFE.sub("_", generation_id).lstrip(".")[:_MAX_STEM]
    if stem == generation_id and stem:
        return stem
    return f"{stem}-{_digest(generation_id)[:10]}" if stem else f"id-{_digest(generation_id)[:16]}"


def _redact(url: httpx.URL) -> str:
    """The URL without credentials, query or fragment: safe for messages and logs."""
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}{url.path}"


def _plan(
    generation_or_url: Generation | str | Sequence[str],
) -> list[tuple[str, str]]:
    """(URL, file stem) for each image, in order."""
    if isinstance(generation_or_url, Generation):
        generation = generation_or_url
        if not generation.image_urls and generation.status is not GenerationStatus.COMPLETED:
            raise ValueError(
                f"Generation {generation.id} is {generation.status.value} and has no image "
                "URLs yet: wait for it first (client.job(id).wait())."
            )
        urls = list(generation.image_urls)
        if generation.id:
            base = safe_stem(generation.id)
            return [(url, f"{base}-{index}") for index, url in enumerate(urls)]
    elif isinstance(generation_or_url, str):
        urls = [generation_or_url]
    elif isinstance(generation_or_url, Sequence):
        urls = list(generation_or_url)
        for url in urls:
            if not isinstance(url, str):
                raise TypeError(f"image URLs must be str, not {type(url).__name__}")
    else:
        raise TypeError("download() takes a Generation, an image URL or a list of image URLs")
    # No generation id: name each file after a hash of its URL (query included, so
    # two different signed URLs never overwrite each other).
    return [(url, f"image-{_digest(url)[:16]}-{index}") for index, url in enumerate(urls)]


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        shown = url.split("?", maxsplit=1)[0].split("#", maxsplit=1)[0]
        raise DownloadError(f"Not a valid image URL: {shown[:80]!r}", url=shown) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DownloadError(f"Not an http(s) image URL: {_redact(parsed)}", url=_redact(parsed))
    return parsed


class _TransientError(Exception):
    """Internal: this attempt failed in a way the retry table may retry."""

    def __init__(self, error: DownloadError, outcome: Outcome, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome
        self.retry_after = retry_after


def _limiter(client: AsyncNanoBanana) -> anyio.Semaphore:
    limiter = _limiters.get(client)
    if limiter is None:
        limiter = anyio.Semaphore(max(1, int(client._download_concurrency)))
        _limiters[client] = limiter
    return limiter


async def download(
    client: AsyncNanoBanana,
    generation_or_url: Generation | str | Sequence[str],
    dest: str | os.PathLike[str],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
) -> list[Path]:
    """Write each image to ``dest`` and return the paths, in the order of the URLs.

    All images are fetched (a bounded number at a time) even when one fails; the
    first failure is then raised, and the images that did arrive stay, whole (the
    error's ``saved`` lists them).
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError("max_size must be a positive number of bytes")
    plan = [(_parse_url(url), stem) for url, stem in _plan(generation_or_url)]
    # Closed client, or one first used in another event loop: the API's own errors.
    client._requester._check_usable()
    target = anyio.Path(dest)
    try:
        await target.mkdir(parents=True, exist_ok=True)
        folder = Path(await target.resolve())
    except OSError as exc:  # a file where the folder should be, no permission, ...
        shown = _redact(plan[0][0]) if plan else ""
        reason = (
            "it exists and is not a folder" if isinstance(exc, FileExistsError) else _os_reason(exc)
        )
        raise DownloadError(
            f"Cannot save images in {os.fspath(dest)!r}: {reason}.", url=shown
        ) from exc
    limiter = _limiter(client)
    paths: list[Path | None] = [None] * len(plan)
    errors: list[tuple[int, Exception]] = []

    async def one(index: int, url: httpx.URL, stem: str) -> None:
        try:
            paths[index] = await _fetch_with_retries(
                client, limiter=limiter, url=url, folder=folder, stem=stem, max_size=max_size
            )
        except Exception as exc:  # noqa: BLE001 - kept and re-raised below, first by index
            errors.append((index, exc))

    if len(plan) == 1:
        await one(0, *plan[0])
    else:
        async with anyio.create_task_group() as group:
            for index, (url, stem) in enumerate(plan):
                group.start_soon(one, index, url, stem)
    saved = [path for path in paths if path is not None]
    if errors:
        first = min(errors, key=lambda item: item[0])[1]
        if isinstance(first, DownloadError):
            first.saved = tuple(saved)
        raise first
    return saved


async def _fetch_with_retries(
    client: AsyncNanoBanana,
    *,
    limiter: anyio.Semaphore,
    url: httpx.URL,
    folder: Path,
    stem: str,
    max_size: int,
) -> Path:
    policy = client.retry_policy
    clock = client._clock
    budget_end = clock.monotonic() + policy.timeout if policy.timeout is not None else None
    attempt = 0
    while True:
        attempt += 1
        try:
            async with limiter:
                return await _fetch_once(client, url, folder, stem, max_size)
        except _TransientError as transient:
            if not decide(RequestKind.READ, transient.outcome).retry or attempt >= policy.attempts:
                raise transient.error from transient.error.__cause__
            wait = transient.retry_after
            if wait is None:
                wait = policy.backoff(attempt, client._rand)
            if budget_end is not None and clock.monotonic() + wait > budget_end:
                raise transient.error from transient.error.__cause__
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
        request = httpx.Request("GET", url, headers=headers)
        try:
            response = await http.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, shown) from exc
        try:
            status = response.status_code
            if status in _REDIRECTS and "location" in response.headers:
                url = _redirect_target(url, response.headers["location"], shown)
                shown = _redact(url)
                continue
            if status >= 300:
                raise _status_error(client, response, shown)
            return await _save(response, folder, stem, max_size, shown)
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


def _transport_error(exc: httpx.HTTPError, shown: str) -> _TransientError:
    error = DownloadError(f"Image {shown}: {type(exc).__name__}: {exc}", url=shown)
    error.__cause__ = exc
    return _TransientError(error, outcome_of_exception(exc), None)


def _status_error(
    client: AsyncNanoBanana, response: httpx.Response, shown: str
) -> DownloadError | _TransientError:
    status = response.status_code
    text = f"Image {shown}: {status} {response.reason_phrase or 'error'}."
    if status in _GONE:
        # The usual reason on a CDN: the link is older than its 15 days (overview docs).
        return DownloadError(
            f"{text} Image URLs expire 15 days after the generation; an older link "
            "cannot be downloaded any more.",
            url=shown,
            status_code=status,
        )
    error = DownloadError(text, url=shown, status_code=status)
    outcome = outcome_of_status(status)
    if outcome is Outcome.CLIENT_ERROR:
        return error
    retry_after = parse_retry_after(
        response.headers.get("retry-after"),
        now=client._clock.time(),
        cap=client.retry_policy.retry_after_max,
    )
    return _TransientError(error, outcome, retry_after)


async def _save(
    response: httpx.Response, folder: Path, stem: str, max_size: int, shown: str
) -> Path:
    declared = response.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > max_size:
        raise _too_big(shown, max_size)
    # Not tempfile.mkstemp: its 0600 mode would stick to the image after the rename.
    # O_EXCL never opens an existing file or follows a planted symlink.
    temp = folder / f".{stem}.{secrets.token_hex(8)}.part"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
    except OSError as exc:
        raise _write_error(shown, folder, exc) from exc
    done = False
    try:
        try:
            with os.fdopen(fd, "wb") as file:
                extension = await _copy(response, file, max_size, shown)
        except OSError as exc:  # a full disk, say; httpx's errors are no OSError
            raise _write_error(shown, folder, exc) from exc
        final = folder / f"{stem}.{extension}"
        if final.parent != folder:  # cannot happen with safe_stem; never trust it blindly
            raise DownloadError(f"Image {shown}: unsafe file name.", url=shown)
        try:
            temp.replace(final)
        except OSError as exc:  # a directory of that name, say
            raise _write_error(shown, final, exc) from exc
        done = True
        return final
    finally:
        if not done:
            # Synchronous on purpose: in a cancelled scope any await would raise again
            # before the partial file is gone.
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


async def _copy(response: httpx.Response, file: BinaryIO, max_size: int, shown: str) -> str:
    """Stream the body into ``file``; returns the extension its first bytes call for."""
    extension: str | None = None
    head = b""
    size = 0
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(
            f"Image {shown}: the server sent a {encoding}-encoded body though identity "
            "was asked for; refused (its size cannot be bounded before inflating it).",
            url=shown,
            status_code=response.status_code,
        )
    try:
        # With the encoding checked above, httpx's decoder here is the identity one.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_size:
                raise _too_big(shown, max_size)
            if extension is None:
                head += chunk
                if len(head) < _SNIFF:
                    continue
                extension = _sniff(head, response, shown)
                chunk = head  # noqa: PLW2901 - the held-back head goes out first
            # Writes of one network read land in the page cache in microseconds, less
            # than a hop to a worker thread would cost.
            file.write(chunk)
    except httpx.HTTPError as exc:
        raise _transport_error(exc, shown) from exc
    if extension is None:
        extension = _sniff(head, response, shown)
        file.write(head)
    return extension


def _sniff(head: bytes, response: httpx.Response, shown: str) -> str:
    extension = image_extension(head)
    if extension is None:
        content_type = response.headers.get("content-type", "no content type")
        what = "an empty body" if not head else f"{content_type}, starting {head[:8]!r}"
        raise DownloadError(
            f"Image {shown}: the server sent {what}, not a PNG, JPEG, WebP, GIF or AVIF "
            "image (an error page?).",
            url=shown,
            status_code=response.status_code,
        )
    return extension


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _write_error(shown: str, path: Path, exc: OSError) -> DownloadError:
    return DownloadError(
        f"Image {shown}: cannot write {str(path)!r}: {_os_reason(exc)}.", url=shown
    )


def _too_big(shown: str, max_size: int) -> DownloadError:
    return DownloadError(
        f"Image {shown}: larger than {max_size} bytes (max_size); stopped reading.",
        url=shown,
    )
