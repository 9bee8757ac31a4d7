"""A tiny PNG encoder (standard library only) and the simulator's deterministic images.

The simulated CDN must serve real images, so that clients which check or decode what
they download are exercised for real. Each image is a small RGB gradient whose colours
are derived from the prompt and the image's index: the same request always yields the
same bytes, and two images of one generation differ.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

__all__ = ["PNG_SIGNATURE", "encode_png", "render_image"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_COLOR_TYPE_RGB = 2
_BIT_DEPTH = 8
_FILTER_NONE = b"\x00"


def _chunk(kind: bytes, data: bytes) -> bytes:
    # Each chunk is length, type, data, and a CRC over type + data (PNG spec section 5.3).
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rows: list[bytes]) -> bytes:
    """Encode 8-bit RGB rows as a PNG file.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        rows: ``height`` rows of ``3 * width`` bytes each (R, G, B per pixel).

    Returns:
        The bytes of a complete PNG file.

    Raises:
        ValueError: If the rows do not match the dimensions.
    """
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if len(rows) != height or any(len(row) != 3 * width for row in rows):
        raise ValueError("rows do not match the image dimensions")
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOR_TYPE_RGB, 0, 0, 0)
    raw = b"".join(_FILTER_NONE + row for row in rows)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def render_image(prompt: str, index: int, *, size: int = 64) -> bytes:
    """Render the deterministic image number ``index`` for ``prompt``.

    Args:
        prompt: The generation's prompt (the image's colours derive from it).
        index: The image's position in the generation (0-based).
        size: Width and height in pixels.

    Returns:
        A ``size`` x ``size`` RGB PNG.
    """
    digest = hashlib.sha256(f"{index}:{prompt}".encode()).digest()
    top_left = digest[0:3]
    bottom_right = digest[3:6]
    stripe = digest[6] % 8 + 4
    span = max(size - 1, 1)
    rows: list[bytes] = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            weight = (x + y) / (2 * span)
            ends = zip(top_left, bottom_right, strict=True)
            pixel = [round(a + (b - a) * weight) for a, b in ends]
            if (x // stripe + y // stripe) % 2:
                # A checker pattern over the gradient, so images are not flat colour.
                pixel = [255 - c for c in pixel]
            row.extend(pixel)
        rows.append(bytes(row))
    return encode_png(size, size, rows)
