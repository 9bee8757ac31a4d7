"""Saving one image response: streamed to a temporary file, checked, renamed into place.

`save` is one attempt's write of a body (`nanobanana._download` makes the attempts):

- The body goes to a temporary file in the target folder, named ``.<stem>.<random>.part``
  and opened with ``O_EXCL``, then renamed to its final name with ``os.replace``
  (atomic on one file system), so a failure or cancellation never leaves a partial
  image under the final name; the temporary file is removed on any way out.
- Its size is bounded by ``max_size`` as it arrives (and by a declared
  ``Content-Length`` before), and a compressed ``Content-Encoding`` is refused: it
  would be inflated a network read at a time, ahead of the bound.
- The first bytes decide what it is (`nanobanana._images.image_extension`) and so its
  extension; a body that is no image is a `TransientError`, retried like a 5xx.
- A body delimited by the end of the connection must end where its format ends
  (`nanobanana._images.cut_short`): else it was cut short, and is retried like a
  connection dropped mid-body.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import partial
from pathlib import Path
from typing import BinaryIO

import httpx

from nanobanana._errors import DownloadError
from nanobanana._images import TAIL, cut_short, image_extension
from nanobanana._retry import Outcome, outcome_of_exception

__all__ = ["TransientError", "os_reason", "save", "too_big", "transport_error"]

_SNIFF = 16
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


class TransientError(Exception):
    """This attempt failed in a way the retry table may retry."""

    def __init__(self, error: DownloadError, outcome: Outcome, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome
        self.retry_after = retry_after


def transport_error(exc: httpx.HTTPError, shown: str) -> TransientError:
    """A transport failure of an attempt on ``shown`` (the URL without its query)."""
    error = DownloadError(f"Image {shown}: {type(exc).__name__}: {exc}", url=shown)
    error.__cause__ = exc
    return TransientError(error, outcome_of_exception(exc), None)


async def save(
    response: httpx.Response, folder: Path, stem: str, max_size: int, shown: str
) -> Path:
    """Write the body of ``response`` to ``folder/<stem>.<extension>``, whole or not at all.

    Raises:
        TransientError: a transport failure, a body that is no image or was cut short.
        DownloadError: too big, compressed, or the file system refused.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > max_size:
        raise too_big(shown, max_size)
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
                extension, head, tail, size = await _copy(response, file, max_size, shown)
            if _close_delimited(response) and cut_short(
                extension, head=head, tail=tail, size=size, read_at=partial(_read_at, temp)
            ):
                raise _cut_error(shown, extension, size, response.status_code)
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


async def _copy(
    response: httpx.Response, file: BinaryIO, max_size: int, shown: str
) -> tuple[str, bytes, bytes, int]:
    """Stream the body into ``file``.

    Returns:
        The extension its first bytes call for, its first bytes (at least `_SNIFF` of
        them, or all), its last `TAIL` bytes (or all), and its size.
    """
    extension: str | None = None
    head = tail = b""
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
                raise too_big(shown, max_size)
            if extension is None:
                head += chunk
                if len(head) < _SNIFF:
                    continue
                extension = _sniff(head, response, shown)
                chunk = head  # noqa: PLW2901 - the held-back head goes out first
            # Writes of one network read land in the page cache in microseconds, less
            # than a hop to a worker thread would cost.
            file.write(chunk)
            tail = chunk[-TAIL:] if len(chunk) >= TAIL else (tail + chunk)[-TAIL:]
    except httpx.HTTPError as exc:
        raise transport_error(exc, shown) from exc
    if extension is None:
        extension = _sniff(head, response, shown)
        file.write(head)
        tail = head[-TAIL:]
    return extension, head, tail, size


def _close_delimited(response: httpx.Response) -> bool:
    """Whether the body ran to the end of the connection, which says nothing of its end.

    With ``Content-Length`` or chunked coding, a body cut short is an error of the
    transport already (h11 and llhttp both refuse a chunked body without its last
    chunk); HTTP/2 frames every body.
    """
    if (
        response.http_version not in ("HTTP/1.1", "HTTP/1.0")
        or "content-length" in response.headers
    ):
        return False
    coding: str = response.headers.get("transfer-encoding", "")
    return coding.lower().rsplit(",", 1)[-1].strip() != "chunked"


def _read_at(path: Path, offset: int, count: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(count)


def _cut_error(shown: str, extension: str, size: int, status: int) -> TransientError:
    error = DownloadError(
        f"Image {shown}: the body ended after {size} bytes, before the end of its "
        f"{extension.upper()} image (the connection closed early; the response had no "
        "Content-Length to tell).",
        url=shown,
        status_code=status,
    )
    # As a connection dropped mid-body with a Content-Length: retried.
    return TransientError(error, Outcome.MAYBE_SENT, None)


def _sniff(head: bytes, response: httpx.Response, shown: str) -> str:
    extension = image_extension(head)
    if extension is None:
        content_type = response.headers.get("content-type", "no content type")
        what = "an empty body" if not head else f"{content_type}, starting {head[:8]!r}"
        error = DownloadError(
            f"Image {shown}: the server sent {what}, not a PNG, JPEG, WebP, GIF or AVIF "
            "image (an error page?).",
            url=shown,
            status_code=response.status_code,
        )
        # A CDN's interstitial or error page answered 200 passes like a 5xx: retried.
        raise TransientError(error, Outcome.SERVER_ERROR, None)
    return extension


def os_reason(exc: OSError) -> str:
    """What the operating system said, for a message."""
    return exc.strerror or type(exc).__name__


def _write_error(shown: str, path: Path, exc: OSError) -> DownloadError:
    return DownloadError(f"Image {shown}: cannot write {str(path)!r}: {os_reason(exc)}.", url=shown)


def too_big(shown: str, max_size: int) -> DownloadError:
    """The error of a body larger than ``max_size``: not retried."""
    return DownloadError(
        f"Image {shown}: larger than {max_size} bytes (max_size); stopped reading.",
        url=shown,
    )
