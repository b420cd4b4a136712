"""The container walks: a JPEG's first image runs to its end marker; a PNG has few chunks before IDAT."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from codetr_serve.runtime.decode import DecodeLimits, decode_image
from codetr_serve.runtime.errors import UndecodableImage
from codetr_serve.runtime.image_structure import (
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS_BEFORE_IMAGE,
    require_complete_jpeg,
    require_few_png_chunks,
)

IMAGE = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def _encode(fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(IMAGE).save(out, format=fmt, **options)
    return out.getvalue()


def _png_with_empty_chunks(count: int) -> bytes:
    """The PNG above with `count` empty ancillary chunks between its header and its image data."""
    png = _encode("PNG")
    idat = png.index(b"IDAT") - 4
    empty = struct.pack(">I", 0) + b"teXt" + struct.pack(">I", zlib.crc32(b"teXt"))
    return png[:idat] + empty * count + png[idat:]


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"optimize": True}])
def test_complete_jpegs_pass(options: dict) -> None:
    require_complete_jpeg(_encode("JPEG", **options))


def test_fill_bytes_and_stray_bytes_before_markers_are_skipped_like_libjpeg() -> None:
    jpeg = _encode("JPEG")
    scan_end = jpeg.rindex(b"\xff\xd9")
    padded = jpeg[:2] + b"\xff\xff\xff" + jpeg[2:scan_end] + b"\x00\x00\xff\xff\xd9"
    require_complete_jpeg(padded)
    assert decode_image(padded, DecodeLimits()).shape == (64, 96, 3)


@pytest.mark.parametrize("tail", [b"", b"\xff", b"\xff\xd9"[:1] + b"\x00"])
def test_a_scan_without_its_end_is_refused(tail: bytes) -> None:
    jpeg = _encode("JPEG")
    with pytest.raises(UndecodableImage, match="truncated"):
        require_complete_jpeg(jpeg[:-2] + tail)


def test_a_segment_length_past_the_end_is_refused() -> None:
    jpeg = _encode("JPEG")
    with pytest.raises(UndecodableImage, match="inside a segment"):
        require_complete_jpeg(jpeg[:2] + b"\xff\xe1\xff\xf0" + b"x" * 10)


def test_too_many_segments_are_refused_quickly() -> None:
    comments = b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS + 1)
    started = time.perf_counter()
    with pytest.raises(UndecodableImage, match="segments"):
        require_complete_jpeg(b"\xff\xd8" + comments + _encode("JPEG")[2:])
    assert time.perf_counter() - started < 5, "the walk is bounded"


def test_a_png_with_many_chunks_before_its_pixels_is_refused() -> None:
    """Pillow's header parser spent ~0.4 s per MB of such chunks with the GIL held; now a 400 up front."""
    with pytest.raises(UndecodableImage, match="chunks before its image data") as refused:
        decode_image(_png_with_empty_chunks(MAX_PNG_CHUNKS_BEFORE_IMAGE + 1), DecodeLimits())
    assert refused.value.status == 400


def test_a_png_with_some_metadata_chunks_decodes() -> None:
    data = _png_with_empty_chunks(MAX_PNG_CHUNKS_BEFORE_IMAGE - 8)
    require_few_png_chunks(data)
    assert np.array_equal(decode_image(data, DecodeLimits()), IMAGE[..., ::-1])


def test_other_formats_are_not_walked_as_png() -> None:
    require_few_png_chunks(_encode("JPEG"))
    require_few_png_chunks(b"\x89PNG\r\n\x1a\n")
