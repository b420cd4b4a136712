"""The wire format of one request, apart from the model: TorchServe request dict -> image bytes + options.

Accepted forms (first match wins, fields looked up in this order: ``data``, ``image``, ``file``, ``body``):

* raw image bytes as the body (TorchServe puts them under ``body``, some clients' under ``data``);
* a multipart form file field ``data`` (``image`` and ``file`` also accepted);
* a JSON object ``{"image": "<base64>"}``, either already parsed by TorchServe (``application/json``) or as
  bytes / text that hold JSON; the base64 may be a ``data:image/...;base64,`` URL;
* a text body (``text/*``) holding just the base64 string or data URL.

Options (``score_threshold`` in [0, 1], ``max_detections`` in [1, limit]) come from query parameters /
form fields (TorchServe turns both into keys of the same dict, as bytes) or from fields of the JSON object;
the JSON field wins when both are given, since it travels with the image. ``None`` means "server default".

Unknown keys are ignored on purpose: TorchServe passes every query parameter and form field through, and
ignoring what we do not know lets clients add fields without breaking older servers.

Another wire format (e.g. KServe v2) is another module exposing a function with the same signature as
:func:`parse_request` (see :class:`RequestParser`) and returning the same :class:`ParsedRequest`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from codetr_serve.runtime.errors import (
    EmptyInput,
    InvalidBase64,
    InvalidJSON,
    InvalidOption,
    MissingImage,
    PayloadTooLarge,
)

__all__ = [
    "IMAGE_FIELDS",
    "ParsedRequest",
    "RequestLimits",
    "RequestOptions",
    "RequestParser",
    "parse_options",
    "parse_request",
]

#: Request keys that may hold the image, in lookup order.
IMAGE_FIELDS: tuple[str, ...] = ("data", "image", "file", "body")
_JSON_IMAGE_KEY = "image"
_SCORE_THRESHOLD = "score_threshold"
_MAX_DETECTIONS = "max_detections"
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits: encoded image size in bytes and the largest ``max_detections`` a client may ask."""

    max_bytes: int = 16 * 1024 * 1024
    max_detections: int = 300

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_detections < 1:
            raise ValueError(f"RequestLimits fields must be >= 1, got {self}")


@dataclass(frozen=True)
class RequestOptions:
    """Per-request options; ``None`` means "use the server's default"."""

    score_threshold: float | None = None
    max_detections: int | None = None


@dataclass(frozen=True)
class ParsedRequest:
    """What the rest of the pipeline needs from a request: the encoded image and the options."""

    image_bytes: bytes
    options: RequestOptions


class RequestParser(Protocol):
    """The signature every wire-format codec exposes (this module's :func:`parse_request` is one)."""

    def __call__(self, request: Mapping[str, Any], limits: RequestLimits) -> ParsedRequest: ...


def parse_request(request: Mapping[str, Any], limits: RequestLimits,
                  headers: Mapping[str, str] | None = None) -> ParsedRequest:
    """Extract the encoded image and the options from one TorchServe request dict.

    Options come from HTTP headers (``X-Score-Threshold``, ``X-Max-Detections``: TorchServe 0.12 does not
    pass a /predictions query string on to handlers, so headers are how a raw-body request sets options),
    then request fields (multipart form fields), then JSON fields; later sources win.

    Raises MissingImage, EmptyInput, InvalidJSON, InvalidBase64, PayloadTooLarge or InvalidOption.
    """
    field = next((name for name in IMAGE_FIELDS if request.get(name) is not None), None)
    if field is None:
        raise MissingImage(fields_seen=(str(key) for key in request))
    payload = _as_json_if_json(request[field])
    sources = [_options_from_headers(headers or {}), _options_only(request)]
    if isinstance(payload, Mapping):
        image_bytes = _image_from_json(payload, limits)
        sources.append(_options_only(payload))
    else:
        image_bytes = _image_from_value(payload, limits)
    options = parse_options({k: v for source in sources for k, v in source.items()}, limits)
    return ParsedRequest(image_bytes=image_bytes, options=options)


OPTION_HEADERS = {"x-score-threshold": _SCORE_THRESHOLD, "x-max-detections": _MAX_DETECTIONS}


def _options_from_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {OPTION_HEADERS[name.lower()]: value for name, value in headers.items()
            if isinstance(name, str) and name.lower() in OPTION_HEADERS}


def _options_only(source: Mapping[str, Any]) -> dict[str, Any]:
    return {key: source[key] for key in (_SCORE_THRESHOLD, _MAX_DETECTIONS) if key in source}


def _as_json_if_json(value: Any) -> Any:
    """Parse bytes/str that hold JSON (first non-blank char ``{`` or ``[``); other values pass through.

    No supported image format starts with ``{`` or ``[``, so this cannot mistake an image for JSON.
    """
    if isinstance(value, list):
        raise _json_array_error()
    if not isinstance(value, bytes | bytearray | str):
        return value
    head = value.lstrip()[:1]
    if head not in (b"{", b"[", "{", "["):
        return value
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJSON(
            f'The body is not valid JSON ({exc}); send an object like {{"image": "<base64>"}}.'
        ) from exc
    if isinstance(parsed, list):
        raise _json_array_error()
    return parsed


def _json_array_error() -> InvalidJSON:
    # One image per request: batching is TorchServe's job, so an array is a client mistake.
    return InvalidJSON('The JSON body is an array; send one object per request, like {"image": "<base64>"}.')


def _image_from_json(payload: Mapping[str, Any], limits: RequestLimits) -> bytes:
    if _JSON_IMAGE_KEY not in payload:
        raise MissingImage(
            f'The JSON object has no "{_JSON_IMAGE_KEY}" field; send {{"image": "<base64>"}}.',
            fields_seen=payload.keys(),
        )
    encoded = payload[_JSON_IMAGE_KEY]
    if not isinstance(encoded, str):
        raise InvalidJSON(
            f'"{_JSON_IMAGE_KEY}" must be a base64 string, got {type(encoded).__name__}; '
            'send {"image": "<base64>"}.'
        )
    return _decode_base64_text(encoded, limits)


def _image_from_value(value: Any, limits: RequestLimits) -> bytes:
    """Raw bytes are the image itself; text is base64 (or a data URL)."""
    if isinstance(value, str):
        return _decode_base64_text(value, limits)
    if not isinstance(value, bytes | bytearray):
        raise MissingImage(f"The image field holds a {type(value).__name__}, not image bytes.")
    if not value:
        raise EmptyInput()
    if len(value) > limits.max_bytes:
        raise PayloadTooLarge(len(value), limits.max_bytes)
    return bytes(value)


def _decode_base64_text(text: str, limits: RequestLimits) -> bytes:
    """Decode standard or URL-safe base64, optionally a data URL; lenient on whitespace and padding."""
    text = _strip_data_url(text.strip())
    compact = "".join(text.split())
    if not compact:
        raise EmptyInput('The "image" field is empty; put the base64-encoded image file in it.')
    # Refuse before decoding: 4 base64 characters carry 3 bytes.
    estimated = len(compact) * 3 // 4
    if estimated > limits.max_bytes + 3:
        raise PayloadTooLarge(estimated, limits.max_bytes)
    normalised = compact.replace("-", "+").replace("_", "/")
    normalised += "=" * (-len(normalised) % 4)
    try:
        decoded = base64.b64decode(normalised, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64(
            f"The image is not valid base64 ({exc}); encode the whole file with standard base64."
        ) from exc
    if not decoded:
        raise EmptyInput('The "image" field decodes to 0 bytes; put the base64-encoded image file in it.')
    if len(decoded) > limits.max_bytes:
        raise PayloadTooLarge(len(decoded), limits.max_bytes)
    return decoded


def _strip_data_url(text: str) -> str:
    """``data:image/png;base64,AAAA`` -> ``AAAA``; other text is returned unchanged."""
    if not text[:5].lower() == "data:":
        return text
    header, comma, body = text.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise InvalidBase64(
            "Only base64 data URLs are accepted; use the form 'data:image/jpeg;base64,<base64>'."
        )
    return body


def parse_options(source: Mapping[str, Any], limits: RequestLimits) -> RequestOptions:
    """Read and validate ``score_threshold`` and ``max_detections``; other keys are ignored."""
    threshold = source.get(_SCORE_THRESHOLD)
    max_dets = source.get(_MAX_DETECTIONS)
    return RequestOptions(
        score_threshold=None if threshold is None else _parse_score_threshold(threshold),
        max_detections=None if max_dets is None else _parse_max_detections(max_dets, limits),
    )


def _option_text(value: Any) -> str | None:
    """Query parameters arrive as bytes; JSON fields may be strings. None if not text."""
    if isinstance(value, bytes | bytearray):
        try:
            return value.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
    return value.strip() if isinstance(value, str) else None


def _parse_score_threshold(value: Any) -> float:
    allowed = "a number between 0 and 1 (inclusive)"
    text = _option_text(value)
    number: float | None = None
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidOption(_SCORE_THRESHOLD, _printable(value), allowed)
    return number


def _parse_max_detections(value: Any, limits: RequestLimits) -> int:
    allowed = f"an integer between 1 and {limits.max_detections} (inclusive)"
    text = _option_text(value)
    number: int | None = None
    if text is not None:
        number = int(text) if _INTEGER.fullmatch(text) else None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or not 1 <= number <= limits.max_detections:
        raise InvalidOption(_MAX_DETECTIONS, _printable(value), allowed)
    return number


def _printable(value: Any) -> Any:
    """Bytes shown as text in error messages; long values cut so a message never echoes a payload."""
    shown: Any = value
    if isinstance(value, bytes | bytearray):
        shown = value.decode("utf-8", errors="replace")
    if isinstance(shown, str) and len(shown) > 40:
        shown = shown[:40] + "..."
    return shown
