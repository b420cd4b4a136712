"""Image decoding's error paths: what is wrong and what to send instead, in our words, never a Python
repr or a decoder's text; and the layouts only the fuzz corpus generator can write."""

from __future__ import annotations

import io
import re
import struct
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from codetr_serve.runtime import decode as decode_module
from codetr_serve.runtime.decode import decode_image
from codetr_serve.runtime.errors import ImageTooLarge, ImageTooSmall, UndecodableImage, UnsupportedImageFormat
from tests.fuzz.make_corpus import interlaced_png, raw_tiff
from tests.unit.test_decode import LIMITS, RGB, encode, mmcv_load, png_header_only

LEAKS = re.compile(r"object at 0x|Traceback|<[\w.]+ object|\b\w+(Error|Exception)\b|DOS attack")


@pytest.mark.parametrize(
    ("planes", "sample_format", "planar", "layout"),
    [
        (RGB.transpose(2, 0, 1).astype(np.float64) / 255, 3, True, "64-bit floating-point"),
        (RGB.transpose(2, 0, 1).astype(np.float32) / 255, 3, False, "32-bit floating-point"),
        (RGB[None, ..., 0].astype(np.int32), 2, False, "32-bit signed-integer"),
    ],
    ids=["float64-planar", "float32-rgb", "int32-gray"],
)
def test_valid_tiff_with_unsupported_samples_says_so(planes, sample_format, planar, layout) -> None:
    data = raw_tiff(planes, sample_format, planar)
    with pytest.raises(UnsupportedImageFormat) as caught:
        decode_image(data, LIMITS)
    message = caught.value.message
    assert caught.value.status == 415 and f"TIFF stores {layout} samples" in message
    assert "8- or 16-bit unsigned-integer" in message and not LEAKS.search(message)


def test_planar_uint8_tiff_and_interlaced_png_decode_like_mmcv() -> None:
    for data in (raw_tiff(RGB.transpose(2, 0, 1), 1, planar=True), interlaced_png(RGB)):
        image = decode_image(data, LIMITS)
        assert np.array_equal(image, RGB[..., ::-1]) and np.array_equal(image, mmcv_load(data))


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """Deterministic corruptions: overwritten, inserted and deleted bytes, and truncations."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        body = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, len(body)))
            kind = int(rng.integers(0, 4))
            if kind == 0:
                body[at] = int(rng.integers(0, 256))
            elif kind == 1:
                body[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
            elif kind == 2:
                del body[at : at + int(rng.integers(1, 9))]
            else:
                del body[max(at, 16) :]
        out.append(bytes(body))
    return out


SOURCES = {
    "png": encode(Image.fromarray(RGB), "PNG"),
    "tiff-lzw": encode(Image.fromarray(RGB), "TIFF", compression="tiff_lzw"),
    "jpeg-cmyk": encode(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_corrupted_files_get_messages_of_ours(source: str) -> None:
    outcomes = set()
    for data in mutations(SOURCES[source], 80, seed=len(source)):
        try:
            decode_image(data, LIMITS)
            outcomes.add("image")
        except (UndecodableImage, UnsupportedImageFormat, ImageTooLarge, ImageTooSmall) as error:
            assert 400 <= error.status < 500
            assert not LEAKS.search(error.message), error.message
            outcomes.add(error.code)
    assert "undecodable_image" in outcomes  # the mutations did reach the error paths


@pytest.mark.parametrize(("target", "failure", "said", "hidden"), [
    ("Image.open", struct.error("unpack requires a buffer of 4 bytes <secret at 0x1>"), "looks like PNG",
     "unpack"),
    ("cv2.imdecode", cv2.error("OpenCV(4.10.0) resize.cpp:4155: error: (-215:Assertion failed)"),
     "PNG image could not be decoded", "OpenCV"),
])
def test_any_exception_from_a_decoder_library_is_an_undecodable_image(monkeypatch, target, failure, said,
                                                                       hidden) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise failure

    module_name, function = target.split(".")
    monkeypatch.setattr(getattr(decode_module, module_name), function, explode)
    with pytest.raises(UndecodableImage) as caught:
        decode_image(SOURCES["png"], LIMITS)
    assert said in caught.value.message and hidden not in caught.value.message


def test_limits_hold_for_what_the_decoder_produced(monkeypatch) -> None:
    # A crafted file whose header and pixel data disagree: the decoded array is checked as well.
    monkeypatch.setattr(decode_module.cv2, "imdecode", lambda *a, **k: np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageTooSmall):
        decode_image(SOURCES["png"], LIMITS)


def test_pillows_bomb_guard_is_reported_in_our_words() -> None:
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(png_header_only(50_000, 50_000), LIMITS)
    assert "declares more than" in caught.value.message and not LEAKS.search(caught.value.message)


@pytest.mark.parametrize(("height", "width"), [(8, 16_000), (16_000, 8), (10, 1_001)])
def test_extreme_aspect_ratios_are_refused_before_resizing_breaks(height: int, width: int) -> None:
    # 16000x8 at a 320-pixel test scale made the resize fail inside the worker (a 500 for a client's input).
    data = encode(Image.fromarray(np.zeros((height, width, 3), np.uint8)), "PNG")
    with pytest.raises(ImageTooSmall, match="more than 100 times the other"):
        decode_image(data, LIMITS)
    assert decode_image(encode(Image.fromarray(np.zeros((10, 1000, 3), np.uint8)), "PNG"), LIMITS).shape \
        == (10, 1000, 3)


def test_the_worker_quiets_opencvs_per_image_warnings(capfd) -> None:
    buffer = io.BytesIO()
    Image.fromarray(RGB[..., 0].astype(np.float32) / 255).save(buffer, "TIFF")  # Pillow's mode "F"
    data = buffer.getvalue()
    before = cv2.getLogLevel()
    try:
        cv2.setLogLevel(3)  # OpenCV's default (WARNING): it writes one line to stderr for this file
        with pytest.raises(UnsupportedImageFormat):
            decode_image(data, LIMITS)
        assert "TIFF" in capfd.readouterr().err
        decode_module.quiet_decoder_warnings()
        with pytest.raises(UnsupportedImageFormat):
            decode_image(data, LIMITS)
        assert capfd.readouterr().err == ""
    finally:
        cv2.setLogLevel(before)
