"""What a download writes, and where: file names that nothing from the server chooses.

A file is named ``<sanitised generation id>-<index>.<ext>`` (or, for bare URLs, after a
hash of the URL), with the extension from the file's first bytes
(`nanobanana._images.image_extension`): an id like ``../../x`` cannot leave the target
folder, and a URL cannot pick an extension.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from nanobanana._models import Generation, GenerationStatus

__all__ = ["plan_files", "safe_stem"]

_MAX_STEM = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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


def plan_files(
    generation_or_url: Generation | str | Sequence[str],
) -> list[tuple[str, str]]:
    """(URL, file stem) for each image to download, in order."""
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
