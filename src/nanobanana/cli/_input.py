"""The input file of ``nanobanana batch``, read lazily.

One prompt per line, or JSON lines with per-item options (both may be mixed; blank
lines and lines starting with ``#`` are skipped):

```python
a banana in space
{"prompt": "a banana on the moon", "aspect_ratio": "16:9", "key": "moon"}
```

Each line becomes a `BatchRequest`; the library gives each item its key (its ``key``
field, else a digest of its content) and keeps the journal. The file is read twice,
line by line, and never held in memory: once before anything is sent, to check every
line (a bad file costs nothing) and count the items, then as the batch pulls items.
Standard input is copied to a temporary file first, so that it can be read twice too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from typing import IO, TYPE_CHECKING, Any

import attrs

from nanobanana._batch._values import BatchRequest
from nanobanana.cli._exit import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["ITEM_FIELDS", "BatchInput", "InputError", "iter_requests"]

# Accepted per-item fields, the protocol's camelCase names too, mapped to ours.
ITEM_FIELDS = {
    "prompt": "prompt",
    "key": "key",
    "model": "model",
    "selectedModel": "model",
    "aspect_ratio": "aspect_ratio",
    "aspectRatio": "aspect_ratio",
    "reference_image_urls": "reference_image_urls",
    "referenceImageUrls": "reference_image_urls",
    "quantity": "quantity",
}


class InputError(UsageError):
    """Raised when the batch file cannot be used (a usage error: nothing was sent)."""


def _fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in raw.items():
        ours = ITEM_FIELDS.get(name)
        if ours is None:
            known = ", ".join(sorted(k for k, v in ITEM_FIELDS.items() if k == v))
            raise InputError(f"{where}: unknown field {name!r} (known: {known})")
        if ours in fields:
            raise InputError(f"{where}: {name!r} given twice")
        if value is None:
            continue
        fields[ours] = value
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: 'prompt' must be a non-empty string")
    for name in ("key", "model", "aspect_ratio"):
        if name in fields and (not isinstance(fields[name], str) or not fields[name]):
            raise InputError(f"{where}: {name!r} must be a non-empty string")
    if "quantity" in fields:
        quantity = fields["quantity"]
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise InputError(f"{where}: 'quantity' must be a whole number of at least 1")
    if "reference_image_urls" in fields:
        urls = fields["reference_image_urls"]
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(
            isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls
        ):
            raise InputError(f"{where}: 'reference_image_urls' must be a list of http(s) URLs")
        fields["reference_image_urls"] = tuple(urls)
    return fields


def _refuse_json_non_object(text: str, where: str) -> None:
    """A line that is JSON but no object (``["a"]``, ``"a"``) is a mistake, not a prompt.

    Sent as is, it would be paid for as the literal prompt ``["a"]``. Text that merely
    starts with ``[`` or ``"`` and is not JSON (``[draft] a cat``) is a prompt.
    """
    if not text.startswith(("[", '"')):
        return
    try:
        value = json.loads(text)
    except ValueError:
        return
    kind = "an array" if isinstance(value, list) else "a string"
    raise InputError(
        f"{where}: JSON {kind}, not an object; write the prompt as plain text, "
        'or as {"prompt": "..."}'
    )


def iter_requests(lines: Iterable[str], *, name: str) -> Iterator[tuple[int, BatchRequest]]:
    """(line number, request) for each item; raises `InputError` naming the line at fault."""
    for number, raw_line in enumerate(lines, start=1):
        text = raw_line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{name}, line {number}"
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise InputError(f"{where}: not valid JSON ({exc})") from None
            fields = _fields(raw, where)
        else:
            _refuse_json_non_object(text, where)
            fields = {"prompt": text}
        try:
            yield number, BatchRequest(**fields)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from None


def _readable_twice(path: str) -> IO[str]:
    """``path`` opened for reading; stdin, a pipe or a FIFO copied to a temporary file."""
    if path == "-":
        source: IO[str] = sys.stdin
    else:
        source = open(path, encoding="utf-8")  # noqa: PTH123, SIM115 - read twice
        if source.seekable():
            return source
    with contextlib.ExitStack() as stack:
        if source is not sys.stdin:
            stack.callback(source.close)
        copy: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        try:
            shutil.copyfileobj(source, copy)
        except BaseException:
            copy.close()
            raise
    copy.seek(0)
    return copy


def _check(file: IO[str], name: str) -> int:
    """Check every line and count the items; explicit keys must be unique."""
    total = 0
    keys: dict[str, int] = {}
    try:
        for number, request in iter_requests(file, name=name):
            total += 1
            if request.key is None:
                continue
            if request.key in keys:
                raise InputError(
                    f"{name}, line {number}: key {request.key!r} is used twice "
                    f"(first on line {keys[request.key]})"
                )
            keys[request.key] = number
    except UnicodeDecodeError:
        raise InputError(f"cannot read {name}: not UTF-8 text") from None
    if not total:
        raise InputError(f"{name} has no prompts")
    return total


@attrs.define
class BatchInput:
    """The batch file, checked, with its item count; read again with `requests`."""

    name: str
    total: int
    _file: IO[str]

    @classmethod
    def open(cls, path: str) -> BatchInput:
        """Check every line of ``path`` (``-``: standard input) and count the items.

        Raises:
            InputError: the file cannot be read, a line is invalid, an explicit key is
                used twice, or there is no prompt at all.
        """
        name = "stdin" if path == "-" else path
        try:
            file = _readable_twice(path)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"cannot read {path}: not UTF-8 text") from None
        try:
            total = _check(file, name)
        except BaseException:
            file.close()
            raise
        return cls(name, total, file)

    def requests(self) -> Iterator[tuple[int, BatchRequest]]:
        """(line number, request) of every item, read again from the start."""
        self._file.seek(0)
        return iter_requests(self._file, name=self.name)

    def close(self) -> None:
        """Close the file (and delete standard input's copy)."""
        self._file.close()
