"""Image bytes -> the exact array MMDetection would load.

Parity contract: :func:`decode_image` returns what mmdet's ``LoadImageFromFile`` produces with its defaults
(``mmcv.imfrombytes(data, flag='color', backend='cv2')``, i.e. ``cv2.imdecode(buf, cv2.IMREAD_COLOR)``):
an ``H x W x 3`` ``uint8`` array in BGR order. Consequences of using that very decoder:

* grayscale, palette and alpha images become 3-channel BGR (alpha is dropped, not composited);
* 16-bit images are reduced to 8 bits (``value >> 8``);
* EXIF orientation is applied where OpenCV applies it (JPEG, PNG ``eXIf``, TIFF) and not for WebP, BMP --
  exactly like mmdet, so boxes line up with what a model trained through mmdet saw.

Before decoding, the header is read lazily with Pillow (format and size only, no pixel buffer), so size
limits -- including the decompression-bomb guard -- are enforced before any large allocation.

One deliberate difference from mmdet: a JPEG without its end-of-image marker (a truncated upload) is
refused, whereas libjpeg would silently pad it with grey and the model would run on a half-grey image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from codetr_serve.runtime.errors import (
    EmptyInput,
    ImageTooLarge,
    ImageTooSmall,
    PayloadTooLarge,
    UndecodableImage,
    UnsupportedImageFormat,
)

__all__ = ["DecodeLimits", "ImageHeader", "SUPPORTED_FORMATS", "decode_image", "read_header"]

#: Pillow format names we accept. MPO is how Pillow names multi-picture JPEGs written by many cameras/phones.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})
_SUPPORTED_FOR_HUMANS = ("JPEG", "PNG", "WebP", "BMP", "TIFF")

# Magic numbers of the supported formats: lets us tell "corrupt PNG" (400) from "not an image we know" (415)
# when Pillow cannot even parse the header. The others name common mistakes in the 415 message.
_SUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", "GIF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)
_JPEG_END_OF_IMAGE = b"\xff\xd9"


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked before decoding.

    ``max_pixels`` is the decompression-bomb guard (width x height as declared in the header). Pillow also
    refuses headers above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (~179 MP by default); those are reported as
    ImageTooLarge as well, so setting ``max_pixels`` above that has no effect.
    """

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16_384
    min_side: int = 8

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_side, self.min_side) < 1:
            raise ValueError(f"every DecodeLimits field must be >= 1, got {self}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")


@dataclass(frozen=True)
class ImageHeader:
    """What the lazy header read tells us: Pillow format name and declared size (before EXIF rotation)."""

    format: str
    width: int
    height: int


def _sniff_magic(data: bytes) -> tuple[str | None, bool]:
    """(format name, supported?) from the first bytes, or (None, False) if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", True
    for magic, name in _SUPPORTED_MAGIC:
        if data.startswith(magic):
            return name, True
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name, False
    return None, False


def _unreadable_header(data: bytes, reason: Exception) -> Exception:
    """The error to raise when Pillow cannot parse the header at all."""
    name, supported = _sniff_magic(data)
    if supported:
        return UndecodableImage(
            f"The data looks like {name} but its header is corrupt or truncated ({reason}); "
            "re-encode the image and send the complete file."
        )
    return UnsupportedImageFormat(name, _SUPPORTED_FOR_HUMANS)


def read_header(data: bytes) -> ImageHeader:
    """Identify the format and declared size without decoding pixels.

    Raises UnsupportedImageFormat, UndecodableImage or ImageTooLarge (Pillow's own bomb check).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or "unknown"
            width, height = image.size
            scan_start = image.fp.tell() if image.fp is not None else 0
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(None, None, str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow raises SyntaxError/ValueError from some plugins' header parsers on garbage.
        raise _unreadable_header(data, exc) from exc
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImageFormat(fmt, _SUPPORTED_FOR_HUMANS)
    if fmt in ("JPEG", "MPO"):
        _require_jpeg_end(data, scan_start)
    return ImageHeader(format=fmt, width=width, height=height)


def _require_jpeg_end(data: bytes, scan_start: int) -> None:
    """Refuse a JPEG whose entropy-coded data never reaches the end-of-image marker (truncated upload).

    The search starts where Pillow stopped parsing (the start of scan), so an EOI inside an EXIF thumbnail
    does not count. 0xFF bytes in scan data are always followed by 0x00 or RSTn, never by 0xD9.
    """
    if data.find(_JPEG_END_OF_IMAGE, scan_start) == -1:
        raise UndecodableImage("The JPEG is truncated (no end-of-image marker); send the complete file.")


def check_dimensions(width: int, height: int, limits: DecodeLimits) -> None:
    """Enforce pixel-count and side limits on declared dimensions (orientation-independent checks)."""
    if width * height > limits.max_pixels:
        raise ImageTooLarge(width, height, f"the limit is {limits.max_pixels} pixels in total")
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(width, height, f"no side may exceed {limits.max_side} pixels")
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(width, height, limits.min_side)


def decode_image(data: bytes, limits: DecodeLimits) -> np.ndarray:
    """Decode encoded image bytes into an ``H x W x 3`` ``uint8`` BGR array, exactly as mmdet loads files.

    Raises EmptyInput, PayloadTooLarge, UnsupportedImageFormat, ImageTooLarge, ImageTooSmall or
    UndecodableImage (all ServingError subclasses) before or instead of any expensive work.
    """
    if not data:
        raise EmptyInput("The image is empty (0 bytes); send the image file's bytes.")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(len(data), limits.max_bytes)
    header = read_header(data)
    check_dimensions(header.width, header.height, limits)
    # Same call as mmcv.imfrombytes(flag='color', backend='cv2'): this is the parity guarantee.
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UndecodableImage(
            f"The {header.format} image could not be decoded (truncated or corrupt); "
            "re-encode it and send the complete file."
        )
    return image
