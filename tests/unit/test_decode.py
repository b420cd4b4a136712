"""Image decoding: parity with mmcv.imfrombytes for every format, EXIF orientation, and every limit."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import mmcv
import numpy as np
import pytest
from PIL import Image

from codetr_serve.runtime import decode as decode_module
from codetr_serve.runtime.decode import DecodeLimits, decode_image, read_header
from codetr_serve.runtime.errors import (
    EmptyInput,
    ImageTooLarge,
    ImageTooSmall,
    PayloadTooLarge,
    UndecodableImage,
    UnsupportedImageFormat,
)

LIMITS = DecodeLimits()
HEIGHT, WIDTH = 48, 64  # deliberately not square, so a missed or wrong rotation changes the shape


def rgb_pattern(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth RGB image without symmetry (each (R, G) pair is unique) that lossy codecs keep."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(width - 1, 1)
    green = y * 255 // max(height - 1, 1)
    blue = 200 - (x + y) * 100 // max(width + height - 2, 1)
    return np.dstack([red, green, blue]).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def mmcv_load(data: bytes) -> np.ndarray:
    """What mmdet's LoadImageFromFile does with its defaults."""
    return mmcv.imfrombytes(data, flag="color", backend="cv2")


def forbid_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pixels must not be decoded when a limit is exceeded")

    monkeypatch.setattr(decode_module.cv2, "imdecode", refuse)


def png_header_only(width: int, height: int) -> bytes:
    """A 45-byte PNG whose IHDR claims width x height (valid CRC), followed by no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(encode(Image.fromarray(rgb_pattern(16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# --- formats: exact parity with mmcv, and the pixel values we expect ---

RGB = rgb_pattern()
GRAY = RGB[..., 0]
RGB16 = RGB.astype(np.uint16) * 256 + 3  # high byte == RGB, low byte non-zero (must be dropped)

FORMAT_CASES: dict[str, tuple[Callable[[], bytes], np.ndarray | None]] = {
    # name: (encoder, expected BGR pixels, or None for lossy formats)
    "jpeg": (lambda: encode(Image.fromarray(RGB), "JPEG", quality=90), None),
    "png-rgb8": (lambda: encode(Image.fromarray(RGB), "PNG"), RGB[..., ::-1]),
    "png-rgb16": (lambda: cv2.imencode(".png", RGB16[..., ::-1])[1].tobytes(), RGB[..., ::-1]),
    "png-gray16": (lambda: encode(Image.fromarray(RGB16[..., 0]), "PNG"), np.dstack([GRAY] * 3)),
    "png-gray8": (lambda: encode(Image.fromarray(GRAY), "PNG"), np.dstack([GRAY] * 3)),
    "png-gray-alpha": (lambda: encode(Image.fromarray(GRAY).convert("LA"), "PNG"), np.dstack([GRAY] * 3)),
    "png-rgba": (
        lambda: encode(Image.fromarray(np.dstack([RGB, np.full(GRAY.shape, 90, np.uint8)])), "PNG"),
        RGB[..., ::-1],  # alpha is dropped, not composited: that is what mmdet does
    ),
    "webp-lossless": (lambda: encode(Image.fromarray(RGB), "WEBP", lossless=True), RGB[..., ::-1]),
    "webp-lossy": (lambda: encode(Image.fromarray(RGB), "WEBP", quality=80), None),
    "bmp": (lambda: encode(Image.fromarray(RGB), "BMP"), RGB[..., ::-1]),
    "tiff": (lambda: encode(Image.fromarray(RGB), "TIFF"), RGB[..., ::-1]),
    "tiff-deflate": (
        lambda: encode(Image.fromarray(RGB), "TIFF", compression="tiff_adobe_deflate"),
        RGB[..., ::-1],
    ),
    "mpo": (
        lambda: encode(
            Image.fromarray(RGB), "MPO", save_all=True, append_images=[Image.fromarray(RGB[::-1])]
        ),
        None,
    ),
}


@pytest.mark.parametrize("name", list(FORMAT_CASES))
def test_format_decodes_like_mmcv(name: str) -> None:
    make, expected = FORMAT_CASES[name]
    data = make()
    image = decode_image(data, LIMITS)
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(image, mmcv_load(data)), "must equal mmcv.imfrombytes (mmdet's loader)"
    if expected is not None:
        assert np.array_equal(image, expected)
    else:  # lossy: still BGR, close to the source
        assert (
            np.abs(image.astype(int) - RGB[..., ::-1].astype(int)).mean() < 4
        )  # BGR and close to the source


def test_palette_png_expands_to_its_colours() -> None:
    palette_image = Image.fromarray(RGB).quantize(colors=16)
    data = encode(palette_image, "PNG")
    assert read_header(data).format == "PNG"
    image = decode_image(data, LIMITS)
    assert np.array_equal(image, np.asarray(palette_image.convert("RGB"))[..., ::-1])
    assert np.array_equal(image, mmcv_load(data))


def test_bgr_channel_order() -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    image = decode_image(encode(Image.fromarray(red), "PNG"), LIMITS)
    assert image[0, 0].tolist() == [0, 0, 255]


def test_header_is_read_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_pixel_decoding(monkeypatch)
    header = read_header(encode(Image.fromarray(RGB), "WEBP"))
    assert (header.format, header.width, header.height) == ("WEBP", WIDTH, HEIGHT)


# --- EXIF orientation ---


def with_orientation(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(RGB), fmt, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "rotate"),
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_jpeg_exif_orientation_is_applied(
    orientation: int, rotate: Callable[[np.ndarray], np.ndarray]
) -> None:
    data = with_orientation("JPEG", orientation)
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    image = decode_image(data, LIMITS)
    assert np.array_equal(image, rotate(stored))
    assert np.array_equal(image, mmcv_load(data))


def test_png_exif_orientation_is_applied_like_mmcv() -> None:
    data = with_orientation("PNG", 6)
    image = decode_image(data, LIMITS)
    assert image.shape == (WIDTH, HEIGHT, 3)
    assert np.array_equal(image, np.rot90(RGB[..., ::-1], -1))
    assert np.array_equal(image, mmcv_load(data))


def test_webp_exif_orientation_follows_mmcv_which_ignores_it() -> None:
    data = with_orientation("WEBP", 6)
    image = decode_image(data, LIMITS)
    assert np.array_equal(image, mmcv_load(data))
    assert image.shape == (HEIGHT, WIDTH, 3)


# --- limits, checked before decoding ---


def test_empty() -> None:
    with pytest.raises(EmptyInput):
        decode_image(b"", LIMITS)


def test_too_many_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.fromarray(RGB), "PNG")
    forbid_pixel_decoding(monkeypatch)
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert caught.value.status == 413 and str(len(data)) in caught.value.message


@pytest.mark.parametrize(
    "bomb", [png_header_only(50_000, 50_000), jpeg_claiming(60_000, 60_000)], ids=["png", "jpeg"]
)
def test_decompression_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch, bomb: bytes) -> None:
    assert len(bomb) < 2000
    forbid_pixel_decoding(monkeypatch)
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(bomb, LIMITS)
    assert caught.value.status == 413


def test_too_many_pixels_names_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_pixel_decoding(monkeypatch)
    with pytest.raises(ImageTooLarge, match="8000x6000 pixels; the limit is 40000000 pixels"):
        decode_image(png_header_only(8000, 6000), LIMITS)


def test_pixel_limit_is_inclusive() -> None:
    data = encode(Image.fromarray(RGB), "PNG")
    assert decode_image(data, DecodeLimits(max_pixels=HEIGHT * WIDTH)).shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(ImageTooLarge):
        decode_image(data, DecodeLimits(max_pixels=HEIGHT * WIDTH - 1))


def test_side_limit() -> None:
    data = encode(Image.fromarray(np.zeros((40, 3000, 3), np.uint8)), "PNG")
    with pytest.raises(ImageTooLarge, match="no side may exceed 2048"):
        decode_image(data, DecodeLimits(max_side=2048))
    assert decode_image(data, DecodeLimits(max_side=3000)).shape == (40, 3000, 3)


@pytest.mark.parametrize(("height", "width"), [(4, 4), (100, 7), (7, 100)])
def test_too_small(height: int, width: int) -> None:
    data = encode(Image.fromarray(np.zeros((height, width, 3), np.uint8)), "PNG")
    with pytest.raises(ImageTooSmall) as caught:
        decode_image(data, DecodeLimits(min_side=8))
    assert caught.value.status == 400 and f"{width}x{height}" in caught.value.message


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (encode(Image.fromarray(RGB), "GIF"), "GIF"),
        (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (encode(Image.fromarray(RGB), "PPM"), "PPM"),
        (b"hello, this is plain text and not an image at all", None),
    ],
    ids=["gif", "pdf", "ppm", "text"],
)
def test_unsupported_format(data: bytes, detected: str | None) -> None:
    with pytest.raises(UnsupportedImageFormat) as caught:
        decode_image(data, LIMITS)
    assert caught.value.status == 415
    assert caught.value.details["detected"] == detected
    assert "JPEG, PNG, WebP, BMP, TIFF" in caught.value.message


def test_truncated_jpeg_is_refused_although_libjpeg_would_pad_it() -> None:
    data = encode(Image.fromarray(RGB), "JPEG")
    start_of_scan = data.find(b"\xff\xda")
    truncated = data[: (start_of_scan + len(data)) // 2]  # cut inside the compressed pixel data
    assert mmcv_load(truncated).shape == (HEIGHT, WIDTH, 3)  # mmdet would silently run on a half-grey image
    with pytest.raises(UndecodableImage, match="truncated"):
        decode_image(truncated, LIMITS)


def test_jpeg_with_bytes_after_the_end_marker_is_accepted() -> None:
    data = encode(Image.fromarray(RGB), "JPEG") + b"\x00trailer written by some cameras"
    assert np.array_equal(decode_image(data, LIMITS), mmcv_load(data))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "BMP"])
def test_truncated_files_are_undecodable(fmt: str) -> None:
    data = encode(Image.fromarray(RGB), fmt)
    with pytest.raises(UndecodableImage) as caught:
        decode_image(data[: len(data) // 2], LIMITS)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "data", [b"\xff\xd8\xff\xe0garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30], ids=["jpeg-magic", "png-magic"]
)
def test_corrupt_header_with_known_magic_is_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableImage):
        decode_image(data, LIMITS)


def test_limits_validate_themselves() -> None:
    with pytest.raises(ValueError):
        DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError):
        DecodeLimits(min_side=100, max_side=50)

