"""What an image's bytes say: its format, and whether it ends where its format ends.

The format comes from the first bytes (`image_extension`): what a server says in
``Content-Type`` is not trusted.

Whether it is whole matters for a body that HTTP cannot vouch for. A response with
neither ``Content-Length`` nor chunked coding runs to the end of the connection (RFC
9112 section 6.3), so a connection closed early ends it as a normal close would: the
transport reports no error, and a cut image would be saved as a whole one. Then the
format's own end decides (`cut_short`), from the last bytes only (and, for AVIF, the
headers of its top-level boxes), never by decoding the image:

- PNG: the ``IEND`` chunk comes last (PNG spec section 5.6);
- JPEG: the ``FF D9`` end-of-image marker;
- GIF: the ``;`` (0x3B) trailer;
- WebP: the RIFF header's size (file size minus 8) is all there;
- AVIF: the top-level boxes (ISO BMFF) cover the file, none running past its end.

Padding after a PNG's, JPEG's or GIF's end (NUL bytes, line ends: some encoders and
CDNs add them) is no cut. More bytes than the format needs are not a cut either: only a
body that stops short is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["TAIL", "cut_short", "image_extension"]

#: How many of the last bytes of a body `cut_short` needs.
TAIL: Final = 64

_PNG_END: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, CRC of "IEND"
_PADDING: Final = b"\x00\r\n\t "
_MAX_BOXES: Final = 64  # an AVIF has a handful of top-level boxes; past this, stop looking


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


def cut_short(
    extension: str,
    *,
    head: bytes,
    tail: bytes,
    size: int,
    read_at: Callable[[int, int], bytes],
) -> bool:
    """Whether an image of ``size`` bytes stops before its format's end.

    Args:
        extension: what `image_extension` said of its first bytes.
        head: its first bytes (at least 12, or all of it).
        tail: its last `TAIL` bytes (or all of it).
        size: its length in bytes.
        read_at: ``read_at(offset, count)`` reads the saved body (AVIF only).
    """
    if extension == "png":
        return not tail.rstrip(_PADDING).endswith(_PNG_END)
    if extension == "jpg":
        return not tail.rstrip(_PADDING).endswith(b"\xff\xd9")
    if extension == "gif":
        return not tail.rstrip(_PADDING).endswith(b";")
    if extension == "webp":
        return size < int.from_bytes(head[4:8], "little") + 8
    if extension == "avif":
        return _box_runs_past_the_end(size, read_at)
    return False


def _box_runs_past_the_end(size: int, read_at: Callable[[int, int], bytes]) -> bool:
    # Each box starts with its size (32 bits; 1: a 64-bit size follows the type; 0:
    # the box runs to the end of the file), ISO/IEC 14496-12 section 4.2.
    offset = 0
    for _ in range(_MAX_BOXES):
        if offset == size:
            return False
        header = read_at(offset, 16)
        if len(header) < 8:
            return True  # a box header cut in two
        box = int.from_bytes(header[:4], "big")
        if box == 0:
            return False
        if box == 1:
            if len(header) < 16:
                return True
            box = int.from_bytes(header[8:16], "big")
        if box < 8:
            return False  # malformed, not cut: not ours to judge
        offset += box
        if offset > size:
            return True
    return False
