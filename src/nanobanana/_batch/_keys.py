"""Item keys: what identifies an item of a batch in its journal, from one run to the next.

A key is the item's own ``key``, else a digest of its content (prompt and the options
it sets itself), with ``#2``, ``#3`` appended to repeats of the same content. Keys
follow content, not positions, so that editing the input above an item does not make
it run, and be paid for, again. The digest is the one the command line's ``batch``
has always used, so that its ``--output`` files resume across versions.

Memory: one small integer per distinct content seen (to number repeats), and the
explicit keys (to refuse duplicates); nothing else of an item is kept.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanobanana._batch._values import BatchRequest

__all__ = ["Keys", "content_digest"]

_FIELDS = ("prompt", "model", "aspect_ratio", "reference_image_urls", "quantity")


def content_digest(request: BatchRequest) -> str:
    """12 hex digits of SHA-256 over the item's own non-None fields, as canonical JSON."""
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(request, name)
        if value is not None:
            fields[name] = list(value) if isinstance(value, tuple) else value
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class Keys:
    """Gives each item of one batch its key, in input order."""

    def __init__(self) -> None:
        self._seen: set[int] = set()  # digests, as integers: 4x smaller than the strings
        self._repeats: dict[int, int] = {}  # only for contents seen more than once
        self._explicit: set[str] = set()

    def key(self, request: BatchRequest, *, index: int) -> str:
        """The key of ``request``, the item at ``index``.

        Raises:
            ValueError: the request's own key was used by an earlier item.
        """
        if request.key is not None:
            if request.key in self._explicit:
                raise ValueError(f"item {index}: key {request.key!r} is used twice")
            self._explicit.add(request.key)
            return request.key
        digest = content_digest(request)
        number = int(digest, 16)
        if number not in self._seen:
            self._seen.add(number)
            return digest
        count = self._repeats.get(number, 1) + 1
        self._repeats[number] = count
        return f"{digest}#{count}"
