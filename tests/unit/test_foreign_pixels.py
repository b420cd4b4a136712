"""No decoded pixel may come from memory the decoder did not write (a truncated upload after another request).

Differential: the same truncated file is decoded right after one "victim" image and again right after a
different one, in this process with the worker's allocator settings (keep_freed_memory). Both decodes must
give the same array, with no pixel equal to the victim's at the same place, or both must be refused. Every
accepted format and container, cut at several points, at a size the fresh-memory fill covers and at one
small enough for glibc's per-thread cache, which it does not.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from codetr_serve.runtime.allocator import FreshMemoryFill, keep_freed_memory
from codetr_serve.runtime.decode import DecodeLimits, decode_image
from codetr_serve.runtime.errors import ServingError

LIMITS = DecodeLimits()
CUTS = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97)
SIZES = {"large": (480, 640), "small": (16, 20)}  # (height, width): 921,600 and 960 decoded bytes
_COMMENT_WITH_EOI = b"\xff\xfe\x00\x06a\xff\xd9b"  # a COM segment whose text holds an end-of-image marker


def _gradient(height: int, width: int) -> np.ndarray:
    """Smooth content: a truncated decode of it is far from noise, so leaked bytes stand out."""
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    cols = np.linspace(255, 0, width, dtype=np.uint8)[None, :, None]
    shape = (height, width, 1)
    return np.concatenate([np.broadcast_to(rows, shape), np.broadcast_to(cols, shape),
                           np.full(shape, 90, np.uint8)], axis=2)


def _save(image: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt, **options)
    return out.getvalue()


def _thumbnail_app1(small: np.ndarray) -> bytes:
    """An APP1 segment carrying a complete small JPEG, as EXIF thumbnails do (an FF D9 before the scan)."""
    payload = b"Exif\x00\x00" + _save(small, "JPEG")
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def _after_soi(jpeg: bytes, segment: bytes) -> bytes:
    return jpeg[:2] + segment + jpeg[2:]


def _files(height: int, width: int) -> dict[str, bytes]:
    """One complete file per accepted format and container; MPO variants carry an EOI before their scan."""
    image = _gradient(height, width)
    mpo = io.BytesIO()
    second = Image.fromarray(image[::-1])
    Image.fromarray(image).save(mpo, format="MPO", save_all=True, append_images=[second])
    thumb = _thumbnail_app1(image[::4, ::4].copy())
    return {
        "jpeg-baseline": _save(image, "JPEG", quality=95),
        "jpeg-progressive": _save(image, "JPEG", quality=95, progressive=True),
        "jpeg-comment-eoi": _after_soi(_save(image, "JPEG"), _COMMENT_WITH_EOI),
        "jpeg-thumbnail": _after_soi(_save(image, "JPEG", progressive=True), thumb),
        "mpo": mpo.getvalue(),
        "mpo-comment-eoi": _after_soi(mpo.getvalue(), _COMMENT_WITH_EOI),
        "mpo-thumbnail": _after_soi(mpo.getvalue(), thumb),
        "png": _save(image, "PNG"),
        "webp-lossy": _save(image, "WEBP", quality=90),
        "webp-lossless": _save(image, "WEBP", lossless=True),
        "tiff": _save(image, "TIFF"),
        "tiff-lzw": _save(image, "TIFF", compression="tiff_lzw"),
        "bmp": _save(image, "BMP"),
    }


def _decode_after(victim: bytes, data: bytes) -> np.ndarray | None:
    """Decode `victim`, drop it (its memory goes back to the allocator), then decode `data`."""
    decoded = decode_image(victim, LIMITS)
    del decoded
    try:
        return decode_image(data, LIMITS)
    except ServingError as error:
        assert 400 <= error.status < 500, error
        return None


@pytest.fixture(scope="module", autouse=True)
def worker_allocator() -> None:
    """The worker's glibc settings: with freed memory kept, the stale bytes are earlier requests' pixels."""
    keep_freed_memory()


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", sorted(_files(16, 20)))
def test_truncated_image_never_shows_another_requests_pixels(name: str, size: str) -> None:
    height, width = SIZES[size]
    data = _files(height, width)[name]
    rng = np.random.default_rng(7)
    victims = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    encoded_victims = [_save(victim, "PNG") for victim in victims]
    for cut in (*CUTS, (len(data) - 2) / len(data)):
        truncated = data[: int(len(data) * cut)]
        first, second = (_decode_after(victim, truncated) for victim in encoded_victims)
        where = f"{name} ({size}) cut at {len(truncated)} of {len(data)} bytes"
        assert (first is None) == (second is None), f"{where}: refused after one victim only"
        if first is None:
            continue
        assert np.array_equal(first, second), f"{where}: the decode depends on the image decoded before it"
        for victim, decoded in zip(victims, (first, second), strict=True):
            same_as_victim = (decoded == victim[..., ::-1]).all(axis=2).mean()
            assert same_as_victim < 0.01, f"{where}: {same_as_victim:.1%} of pixels are the victim's"


@pytest.mark.parametrize("name", ["jpeg-comment-eoi", "jpeg-thumbnail", "mpo", "mpo-comment-eoi",
                                  "mpo-thumbnail", "jpeg-progressive"])
def test_every_truncated_jpeg_is_refused(name: str) -> None:
    """The cause, apart from the fill: the JPEG walk finds the first image's real end marker."""
    data = _files(480, 640)[name]
    first_image_end = len(data) if not name.startswith("mpo") else data.index(b"\xff\xd9\xff\xd8") + 2
    for cut in (*CUTS, 0.999):
        truncated = data[: int(first_image_end * cut)]
        with pytest.raises(ServingError, match="truncated"):
            decode_image(truncated, LIMITS)
    assert decode_image(data, LIMITS).shape == (480, 640, 3)


def test_without_the_fill_a_truncated_image_must_decode_completely_with_pillow(monkeypatch) -> None:
    """A C library without glibc's fill: OpenCV would decode this cut-off JPEG (the walk bypassed too)."""
    import codetr_serve.runtime.decode as decode

    unavailable = FreshMemoryFill()
    unavailable._mallopt = None
    monkeypatch.setattr(decode, "FRESH_MEMORY_FILL", unavailable)
    monkeypatch.setattr(decode, "require_complete_jpeg", lambda data: None)
    data = _files(480, 640)["jpeg-baseline"]
    with pytest.raises(ServingError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMITS)
    assert decode_image(data, LIMITS).shape == (480, 640, 3)
