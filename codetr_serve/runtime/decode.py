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

One deliberate difference from mmdet: a JPEG whose first image does not reach its end-of-image marker (a
truncated upload) is refused, whereas libjpeg would pad it with grey or leave rows unwritten.

No foreign pixels, by construction: a decoder that stops early leaves rows it never wrote, and those rows
must never show memory an earlier request left behind. Pixels are decoded while glibc fills every block it
hands out (:class:`~codetr_serve.runtime.allocator.FreshMemoryFill`), so unwritten rows read as zeros for
every format, known bug or not. Where the fill cannot reach (outputs small enough for glibc's per-thread
cache, or a C library without it) the image must first decode completely with Pillow, which refuses
truncated data, before OpenCV decodes it.

Errors are ours: Pillow's and OpenCV's exception texts (which can hold object reprs such as
``<_io.BytesIO object at 0x...>``) go to the worker log at debug level, never into a client message. Every
input ends as an image or a ServingError, whatever a decoder raises on hostile bytes.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin

from codetr_serve.runtime.allocator import FRESH_MEMORY_FILL
from codetr_serve.runtime.errors import (
    EmptyInput,
    ImageTooLarge,
    ImageTooSmall,
    PayloadTooLarge,
    ServingError,
    UndecodableImage,
    UnsupportedImageFormat,
)
from codetr_serve.runtime.image_structure import require_complete_jpeg, require_few_png_chunks
from codetr_serve.runtime.settings import default

__all__ = ["DecodeLimits", "ImageHeader", "SUPPORTED_FORMATS", "decode_image", "read_header"]

log = logging.getLogger(__name__)

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
#: Decoded arrays up to this size may come from glibc's per-thread cache (tcache: blocks of at most 1032
#: bytes) or numpy's small-block cache (under 1024 bytes), which the fresh-memory fill does not reach.
SMALL_OUTPUT_BYTES = 4096
#: Keep-ratio resizing scales the long side to the test scale's (>= 200 px in every shipped config): beyond
#: this ratio the short side ends under ~2 px, and under 0.5 px the resize itself fails (a 16000x8 image at
#: the tiny config's 320x192 did: a 500 for a client's input).
MAX_ASPECT_RATIO = 100
_SEND_INSTEAD = "re-encode the image (8-bit JPEG or PNG) and send the complete file"
# TIFF tags (TIFF 6.0): what OpenCV's TIFF reader accepts is unsigned-integer samples of at most 16 bits.
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT = 258, 339
_TIFF_SAMPLE_KINDS = {1: "unsigned-integer", 2: "signed-integer", 3: "floating-point", 4: "untyped",
                      5: "complex-integer", 6: "complex floating-point"}


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked before decoding.

    ``max_pixels`` is the decompression-bomb guard (width x height as declared in the header). Pillow also
    refuses headers above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (~179 MP by default); those are reported as
    ImageTooLarge as well, so setting ``max_pixels`` above that has no effect.
    """

    max_bytes: int = field(default_factory=lambda: default("max_image_bytes"))
    max_pixels: int = field(default_factory=lambda: default("max_image_pixels"))
    max_side: int = field(default_factory=lambda: default("max_image_side"))
    min_side: int = field(default_factory=lambda: default("min_image_side"))

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


def _tiff_layout_problem(data: bytes) -> str | None:
    """Why a TIFF's first page cannot be decoded here (e.g. "64-bit floating-point"); None if it looks fine.

    Reads only the first image file directory, with Pillow's tag parser: that parser works on layouts
    Pillow itself cannot open (float64, planar float), so a valid but unsupported TIFF is told apart from
    a corrupt one.
    """
    try:
        directory = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        stream = io.BytesIO(data)
        stream.seek(directory.next)
        directory.load(stream)
        bits = _as_tuple(directory.get(_TIFF_BITS_PER_SAMPLE, 1))
        kinds = _as_tuple(directory.get(_TIFF_SAMPLE_FORMAT, 1))
    except Exception as exc:  # noqa: BLE001 - hostile bytes; this is only a diagnosis, the caller decides
        log.debug("TIFF directory unreadable: %r", exc)
        return None
    widest = max((b for b in bits if isinstance(b, int)), default=1)
    kind = next((k for k in kinds if k != 1), 1)
    if kind == 1 and widest <= 16:
        return None
    return f"{widest}-bit {_TIFF_SAMPLE_KINDS.get(kind, f'sample-format-{kind}')}"


def _as_tuple(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _unsupported_tiff(layout: str) -> UnsupportedImageFormat:
    return UnsupportedImageFormat(
        f"TIFF ({layout} samples)", _SUPPORTED_FOR_HUMANS,
        message=f"The TIFF stores {layout} samples, which the server does not decode; convert it to 8- or "
                "16-bit unsigned-integer RGB or grayscale, or send it as an 8-bit JPEG or PNG.")


def _unreadable_header(data: bytes, reason: Exception) -> ServingError:
    """The error to raise when Pillow cannot parse the header at all (its reason goes to the log only)."""
    name, supported = _sniff_magic(data)
    log.debug("unreadable image header (%s): %r", name, reason)
    if not supported:
        return UnsupportedImageFormat(name, _SUPPORTED_FOR_HUMANS)
    if name == "TIFF" and (layout := _tiff_layout_problem(data)):
        return _unsupported_tiff(layout)
    tiff_note = " or uses a TIFF layout the server does not decode" if name == "TIFF" else ""
    return UndecodableImage(
        f"The data looks like {name} but the server cannot read its header: the file is corrupt or "
        f"truncated{tiff_note}; {_SEND_INSTEAD}."
    )


def read_header(data: bytes) -> ImageHeader:
    """Identify the format and declared size without decoding pixels.

    Raises UnsupportedImageFormat, UndecodableImage or ImageTooLarge (Pillow's own bomb check).
    """
    require_few_png_chunks(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or "unknown"
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(None, None, f"its header declares more than {2 * Image.MAX_IMAGE_PIXELS} pixels, "
                                        "which the server refuses without decoding") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's header parsers raise many types on garbage
        # (UnidentifiedImageError, SyntaxError, struct.error, IndexError, ...): all mean "unreadable".
        raise _unreadable_header(data, exc) from exc
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImageFormat(fmt, _SUPPORTED_FOR_HUMANS)
    if fmt in ("JPEG", "MPO"):
        require_complete_jpeg(data)
    return ImageHeader(format=fmt, width=width, height=height)


def check_dimensions(width: int, height: int, limits: DecodeLimits) -> None:
    """Enforce pixel-count and side limits on declared dimensions (orientation-independent checks)."""
    if width * height > limits.max_pixels:
        raise ImageTooLarge(width, height, f"the limit is {limits.max_pixels} pixels in total")
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(width, height, f"no side may exceed {limits.max_side} pixels")
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(width, height, limits.min_side)
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageTooSmall(width, height, limits.min_side, message=(
            f"The image is {width}x{height} pixels: one side is more than {MAX_ASPECT_RATIO} times the "
            "other, so scaled to the model's input size its short side would shrink to a pixel or less. "
            "Crop it into pieces of a more usual shape, or pad its short side."))


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
    image = _decode_pixels(data, header)
    # The decoder may disagree with Pillow's header on a crafted file: the limits hold for what it produced.
    check_dimensions(image.shape[1], image.shape[0], limits)
    return image


OPENCV_LOG_ERROR = 2  # OpenCV's LOG_LEVEL_ERROR; the pip wheels do not expose cv2.utils.logging to name it


def quiet_decoder_warnings() -> None:
    """Keep OpenCV's per-image warnings (e.g. a TIFF layout it cannot read) out of the worker's log.

    Each refused image already gets one INFO line of ours with its request id; under hostile traffic
    OpenCV's WARN lines, one per bad file, would flood the log with no id to trace them to.
    """
    cv2.setLogLevel(OPENCV_LOG_ERROR)


def _decode_pixels(data: bytes, header: ImageHeader) -> np.ndarray:
    with FRESH_MEMORY_FILL.active() as filled:
        if not filled or 3 * header.width * header.height <= SMALL_OUTPUT_BYTES:
            _require_complete_by_pillow(data, header)
        try:
            # Same call as mmcv.imfrombytes(flag='color', backend='cv2'): this is the parity guarantee.
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except Exception as exc:  # noqa: BLE001 - cv2.error and friends on hostile bytes; logged, not echoed
            log.debug("cv2.imdecode raised on a %s image: %r", header.format, exc)
            image = None
    if image is not None and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    if header.format == "TIFF" and (layout := _tiff_layout_problem(data)):
        raise _unsupported_tiff(layout)
    raise UndecodableImage(
        f"The {header.format} image could not be decoded (truncated or corrupt); {_SEND_INSTEAD}."
    )


def _require_complete_by_pillow(data: bytes, header: ImageHeader) -> None:
    """Decode with Pillow, which raises where data ends early: a completeness check apart from OpenCV."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - hostile bytes; the reason goes to the log only
        log.debug("Pillow could not decode a %s image completely: %r", header.format, exc)
        if header.format == "TIFF" and (layout := _tiff_layout_problem(data)):
            raise _unsupported_tiff(layout) from exc
        raise UndecodableImage(
            f"The {header.format} image is truncated or corrupt (its pixel data ends early); {_SEND_INSTEAD}."
        ) from exc
