"""Batch input and the results journal that makes ``batch`` resumable.

Input: one prompt per line, or JSON lines with per-item options (both may be mixed;
blank lines and lines starting with ``#`` are skipped):

```python
a banana in space
{"prompt": "a banana on the moon", "aspect_ratio": "16:9", "key": "moon"}
```

Each item has a key: its ``key`` field, else a digest of its content (plus ``#2``,
``#3`` for repeats of the same content). Keys, not line numbers, identify items, so
editing the file above an item does not make it run (and be paid for) again.

The journal (``--output``) gets one JSON line per event worth keeping, written and
flushed as soon as it is known: ``submitted`` (the generation id, so a re-run resumes
polling instead of paying again) and the item's outcome. The last line of a key wins.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import IO, TYPE_CHECKING, Any

import attrs

from nanobanana.cli._exit import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "COMPLETED",
    "FAILED",
    "ITEM_FIELDS",
    "LOST",
    "InputError",
    "Item",
    "Journal",
    "parse_items",
    "read_journal",
]

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

# Outcomes that are final: a re-run skips them (a failed generation was paid for;
# --retry-failed runs it again). LOST: the journal had the item's generation id, but
# the server no longer knows it (404), e.g. the embedded simulator of --simulate
# stopped with an interrupted run; polling it again can never succeed.
COMPLETED = "completed"
FAILED = "failed"
LOST = "lost"


class InputError(UsageError):
    """Raised when the batch file cannot be used (a usage error: nothing was sent)."""


@attrs.frozen(kw_only=True)
class Item:
    """One prompt of a batch, with the options it sets itself."""

    key: str
    line: int
    prompt: str
    model: str | None = None
    aspect_ratio: str | None = None
    reference_image_urls: tuple[str, ...] | None = None
    quantity: int | None = None


def _field(raw: dict[str, Any], where: str) -> dict[str, Any]:
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


def _digest(fields: dict[str, Any]) -> str:
    canonical = json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def parse_items(lines: Iterable[str], *, name: str) -> list[Item]:
    """The items of a batch file; raises `InputError` naming the line at fault."""
    items: list[Item] = []
    seen: dict[str, int] = {}
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
            fields = _field(raw, where)
        else:
            _refuse_json_non_object(text, where)
            fields = {"prompt": text}
        key = fields.pop("key", None)
        if key is None:
            key = _digest(fields)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = f"{key}#{seen[key]}"
        elif key in seen:
            raise InputError(f"{where}: key {key!r} is used twice")
        else:
            seen[key] = 1
        items.append(Item(key=key, line=number, **fields))
    if not items:
        raise InputError(f"{name} has no prompts")
    return items


def read_journal(path: str) -> dict[str, dict[str, Any]]:
    """The last record of each key in an existing journal; torn lines are ignored."""
    records: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as file:  # noqa: PTH123
            for line in file:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: its item simply runs again
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    records[record["key"]] = record
    except FileNotFoundError:
        pass
    return records


class Journal:
    """Appends records to the ``--output`` file, each on disk before the next step."""

    def __init__(self, path: str | None) -> None:
        self._file: IO[str] | None = None
        if path is None:
            return
        needs_newline = False
        try:
            with open(path, "rb") as existing:  # noqa: PTH123
                existing.seek(0, os.SEEK_END)
                if existing.tell() > 0:
                    existing.seek(-1, os.SEEK_END)
                    needs_newline = existing.read(1) != b"\n"
        except FileNotFoundError:
            pass
        self._file = open(path, "a", encoding="utf-8")  # noqa: PTH123, SIM115
        if needs_newline:  # the last run died mid-line: start a fresh one
            self._file.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and push it to disk."""
        if self._file is None:
            return
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
