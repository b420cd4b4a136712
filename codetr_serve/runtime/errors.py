"""Domain errors of the serving core, in one module.

Every error a client (or the server) can cause is a subclass of :class:`ServingError` carrying two class
attributes, in the spirit of KServe's error types:

* ``status``: the HTTP status the front end (TorchServe handler, a test server, a future KServe v2 server)
  should answer with;
* ``code``: a stable, machine-readable reason. Clients may branch on it and metrics use it as a label, so a
  code is never renamed once released (add a new class instead).

The message always says what was wrong *and* how to fix it. :meth:`ServingError.to_dict` gives the JSON
body ``{"error": {"code", "message", "status"}}``.

The status mapping lives here and only here: the subclasses below are grouped by status, and
:func:`error_catalog` lists the ones defined in this module (the docs and tests read it). Start-up and
packing failures (unusable weights) are not HTTP errors: they have their own base class in
:mod:`codetr_serve.runtime.weight_errors`. Status choices worth knowing:

* ``UndecodableImage`` is 400, not 422: the bytes the client sent are not a valid image, which is invalid
  input exactly like bad base64; KServe also answers invalid input with 400, and clients rarely treat 422
  differently from 400.
* ``PayloadTooLarge`` (bytes on the wire) and ``ImageTooLarge`` (pixels, sides, decompression bombs) are both
  413 but keep distinct codes, because the fix differs (compress vs. downscale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "ServingError",
    "EmptyInput",
    "MissingImage",
    "InvalidBase64",
    "InvalidJSON",
    "InvalidOption",
    "UndecodableImage",
    "ImageTooSmall",
    "InvalidEnvelope",
    "AllImagesFailed",
    "TooManyImages",
    "UnsupportedImageFormat",
    "PayloadTooLarge",
    "ImageTooLarge",
    "ModelNotReady",
    "InferenceFailed",
    "client_text",
    "error_catalog",
]

#: The most characters of a client's own input that a message (and so a reply and a log line) repeats.
MAX_ECHO_CHARS = 200


def client_text(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """Client input as a message may show it: text (bytes decoded leniently) cut to ``limit`` characters,
    a long integer by its size, arrays and objects by their size; never the whole of an unbounded value
    (an 8 MB shape once made a 12 MB reply and a 12 MB log line)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: 4 * limit]).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):  # str() of one over 4,300 digits raises; a long one says nothing anyway
        if value.bit_length() <= 64:
            return str(value)
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return f"an object with {len(value)} key{'' if len(value) == 1 else 's'}"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    return type(value).__name__


class ServingError(Exception):
    """Base class of every error the serving core raises on purpose.

    Subclasses set ``status``, ``code`` and ``default_message``; a caller may pass a more specific
    ``message``. Extra keyword arguments are kept in ``details`` for logs (they are not sent to clients,
    since they may hold internal information).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "serving_error"
    default_message: ClassVar[str] = (
        "The server failed to handle the request; retry, and report it if it persists."
    )

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message: str = message or self.default_message
        self.details: dict[str, Any] = details
        super().__init__(self.message)

    def detached(self) -> ServingError:
        """This error, fit to be kept as a value after its ``except`` block: its traceback (and its causes')
        dropped.

        A traceback holds every frame the error passed through, and each frame links back to its callers',
        one of which holds the list this error is kept in: a reference cycle. Only Python's full collection,
        which runs rarely in a worker with a large model, frees it, and until then it keeps every local of
        the batch alive (request bodies, image tensors). The 30-minute soak grew ~2.5 MB/min from this. An
        error kept as an answer needs its status, code and message, not its frames.
        """
        error: BaseException | None = self
        seen: set[int] = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            error.__traceback__ = None
            error = error.__cause__ or error.__context__
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The JSON error body: ``{"error": {"code": ..., "message": ..., "status": ...}}``."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


# ---------------------------------------------------------------------------------------------------------
# 400 Bad Request: the client sent something malformed; it must change the request.
# ---------------------------------------------------------------------------------------------------------


class EmptyInput(ServingError):
    """The request (or the image in it) has no bytes at all."""

    status = 400
    code = "empty_input"
    default_message = "The request contains no image data; send the image bytes as the body."


class MissingImage(ServingError):
    """No field of the request holds an image."""

    status = 400
    code = "missing_image"
    default_message = (
        "No image found in the request. Send one of: the raw image bytes as the body; a multipart form file "
        "field named 'data' (or 'image' / 'file'); or a JSON body {\"image\": \"<base64 or data: URL>\"}. "
        "With curl, give the raw body a type: curl -H 'Content-Type: image/jpeg' --data-binary @img.jpg "
        "(without one curl sends a form encoding, which TorchServe parses as form fields)."
    )

    def __init__(
        self, message: str | None = None, *, fields_seen: Iterable[str] = (), **details: Any
    ) -> None:
        seen = sorted(str(name) for name in fields_seen)
        if message is None and seen:
            # Names come from the client: a few, cut short, so a hostile form cannot make the reply huge.
            shown = [name if len(name) <= 40 else name[:40] + "..." for name in seen[:10]]
            more = f" and {len(seen) - 10} more" if len(seen) > 10 else ""
            message = f"{self.default_message} Fields received: {', '.join(shown)}{more}."
        super().__init__(message, fields_seen=seen, **details)


class InvalidBase64(ServingError):
    """The JSON ``image`` field is not valid base64."""

    status = 400
    code = "invalid_base64"
    default_message = (
        "The 'image' field is not valid base64; encode the image file with standard base64 "
        "(optionally as a data: URL such as 'data:image/jpeg;base64,...')."
    )


class InvalidJSON(ServingError):
    """The body looks like (or is declared as) JSON but cannot be parsed or has the wrong shape."""

    status = 400
    code = "invalid_json"
    default_message = 'The JSON body is invalid; send an object like {"image": "<base64>"}.'


class InvalidOption(ServingError):
    """A per-request option has a value outside its allowed range or of the wrong type."""

    status = 400
    code = "invalid_option"
    default_message = "A request option has an invalid value."

    def __init__(self, option: str, value: Any, allowed: str, message: str | None = None) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        if message is None:
            shown = repr(value) if isinstance(value, str) and len(value) <= MAX_ECHO_CHARS \
                else client_text(value)
            message = f"Invalid value {shown} for option '{option}': expected {allowed}."
        super().__init__(message, option=option, value=value, allowed=allowed)


class UndecodableImage(ServingError):
    """The bytes claim a supported format but cannot be decoded (truncated or corrupt)."""

    status = 400
    code = "undecodable_image"
    default_message = (
        "The image could not be decoded (truncated or corrupt file); re-encode it and send the complete file."
    )


class ImageTooSmall(ServingError):
    """The image is smaller than the minimum side the model can work with."""

    status = 400
    code = "image_too_small"
    default_message = "The image is too small for detection; send a larger image."

    def __init__(self, width: int, height: int, min_side: int, message: str | None = None) -> None:
        if message is None:
            message = (
                f"The image is {width}x{height} pixels; both sides must be at least {min_side} pixels. "
                "Send a larger image."
            )
        super().__init__(message, width=width, height=height, min_side=min_side)


class InvalidEnvelope(ServingError):
    """A KServe v1/v2 body whose structure is wrong (not one image's content): the whole request fails."""

    status = 400
    code = "invalid_envelope"
    default_message = (
        'The request envelope is malformed; send {"instances": [{"b64": "<base64>"}]} (KServe v1) or '
        '{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}]} '
        "(KServe v2)."
    )


class AllImagesFailed(ServingError):
    """Every image of a multi-image request failed, for different client-side reasons."""

    status = 400
    code = "all_images_failed"
    default_message = "Every image in the request failed; each item's error says what to fix."


# ---------------------------------------------------------------------------------------------------------
# 413 Content Too Large / 415 Unsupported Media Type
# ---------------------------------------------------------------------------------------------------------


class PayloadTooLarge(ServingError):
    """The encoded image (bytes on the wire) exceeds the configured limit."""

    status = 413
    code = "payload_too_large"
    default_message = "The request is too large; compress the image or reduce its resolution."

    def __init__(self, size_bytes: int, max_bytes: int, message: str | None = None) -> None:
        if message is None:
            message = (
                f"The image is {size_bytes} bytes; the limit is {max_bytes} bytes. "
                "Compress it (e.g. JPEG) or reduce its resolution."
            )
        super().__init__(message, size_bytes=size_bytes, max_bytes=max_bytes)


class TooManyImages(ServingError):
    """One request carries more images than ``max_images_per_request`` allows."""

    status = 413
    code = "too_many_images"
    default_message = "The request carries too many images; split it into several requests."

    def __init__(self, count: int, limit: int, message: str | None = None) -> None:
        if message is None:
            message = (
                f"The request carries {count} images; the limit is {limit} per request. Split them into "
                "several requests: the server batches concurrent requests into one forward anyway."
            )
        super().__init__(message, count=count, limit=limit)


class ImageTooLarge(ServingError):
    """The image dimensions exceed the limits (also the decompression-bomb guard)."""

    status = 413
    code = "image_too_large"
    default_message = "The image dimensions are too large; downscale the image."

    def __init__(self, width: int | None, height: int | None, limit: str, message: str | None = None) -> None:
        # width/height are None when the header was refused before its size could be read (Pillow's own
        # decompression-bomb check); ``limit`` then carries the reason.
        if message is None:
            size = f"{width}x{height} pixels" if width is not None and height is not None else "too large"
            message = f"The image is {size}; {limit}. Downscale it before sending."
        super().__init__(message, width=width, height=height, limit=limit)


class UnsupportedImageFormat(ServingError):
    """The bytes are not an image format the server decodes."""

    status = 415
    code = "unsupported_image_format"
    default_message = "The image format is not supported."

    def __init__(
        self, detected: str | None, supported: Sequence[str] = (), message: str | None = None
    ) -> None:
        if message is None:
            what = f"format {detected}" if detected else "an unrecognised format"
            accepted = ", ".join(supported) if supported else "a common image format"
            message = f"The data is {what}; send one of: {accepted}."
        super().__init__(message, detected=detected, supported=list(supported))


# ---------------------------------------------------------------------------------------------------------
# 5xx: the server's fault; the client may retry.
# ---------------------------------------------------------------------------------------------------------


class ModelNotReady(ServingError):
    """The model is not loaded (yet, or any more)."""

    status = 503
    code = "model_not_ready"
    default_message = "The model is not loaded yet; retry in a few seconds."


class InferenceFailed(ServingError):
    """The model raised while running on a valid input."""

    status = 500
    code = "inference_failed"
    default_message = "Inference failed on the server; retry, and report it if it persists."


def error_catalog() -> dict[str, int]:
    """``{code: status}`` for every ServingError class defined in this module, whatever else is imported."""
    return {obj.code: obj.status for obj in globals().values()
            if isinstance(obj, type) and issubclass(obj, ServingError) and obj.__module__ == __name__}
