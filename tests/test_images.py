"""Image formats: the extension from the first bytes, and whether a body stops short."""

import pytest

from nanobanana._images import TAIL, cut_short, image_extension

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def big_box(kind: bytes, payload: bytes) -> bytes:
    return b"\x00\x00\x00\x01" + kind + (16 + len(payload)).to_bytes(8, "big") + payload


AVIF = box(b"ftyp", b"avif\x00\x00\x00\x00mif1") + box(b"meta", b"m" * 30) + box(b"mdat", b"d" * 90)


def is_cut(body: bytes) -> bool:
    extension = image_extension(body[:16])
    assert extension is not None
    return cut_short(
        extension,
        head=body[:16],
        tail=body[-TAIL:],
        size=len(body),
        read_at=lambda offset, count: body[offset : offset + count],
    )


@pytest.mark.parametrize(
    ("body", "cut"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"p" * 40 + PNG_END, False),
        (b"\x89PNG\r\n\x1a\n" + b"p" * 40 + PNG_END + b"\n", False),
        (b"\x89PNG\r\n\x1a\n" + b"p" * 40 + PNG_END[:-1], True),
        (b"\x89PNG\r\n\x1a\n" + b"p" * 40, True),
        (b"\xff\xd8\xff\xe0" + b"j" * 40 + b"\xff\xd9", False),
        (b"\xff\xd8\xff\xe0" + b"j" * 40 + b"\xff\xd9\x00\x00", False),
        (b"\xff\xd8\xff\xe0" + b"j" * 40 + b"\xff", True),
        (b"GIF89a" + b"g" * 40 + b";", False),
        (b"GIF89a" + b"g" * 40, True),
        (b"RIFF" + (4 + 40).to_bytes(4, "little") + b"WEBP" + b"w" * 40, False),
        (b"RIFF" + (4 + 40).to_bytes(4, "little") + b"WEBP" + b"w" * 39, True),
        (AVIF, False),
        (AVIF[:-1], True),
        (AVIF[: len(AVIF) - 98 + 4], True),  # the last box's header cut in two
        (AVIF[:-98] + b"\x00\x00\x00\x00mdat" + b"d" * 10, False),  # size 0: to the end
        (AVIF[:-98] + big_box(b"mdat", b"d" * 50), False),
        (AVIF[:-98] + big_box(b"mdat", b"d" * 50)[:-1], True),
        (AVIF[:-98] + b"\x00\x00\x00\x01mdat\x00\x00", True),  # its 64-bit size cut
        (AVIF[:-98] + b"\x00\x00\x00\x04mdat" + b"d" * 10, False),  # malformed: not judged
    ],
)
def test_a_body_is_cut_short_when_it_stops_before_its_formats_end(body, cut):
    assert is_cut(body) is cut


def test_only_the_tail_and_the_box_headers_are_read():
    reads = []
    body = AVIF + b"".join(box(b"free", b"f" * 1000) for _ in range(3))

    def read_at(offset, count):
        reads.append((offset, count))
        return body[offset : offset + count]

    assert not cut_short("avif", head=body[:16], tail=body[-TAIL:], size=len(body), read_at=read_at)
    assert all(count == 16 for _, count in reads)
    assert len(reads) == 6  # one per top-level box
