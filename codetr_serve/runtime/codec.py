"""What every wire format shares: where the body is, limits, options, base64, JSON and request ids.

The wire formats themselves (TorchServe's /predictions, KServe v1 and v2) are one class each in
:mod:`codetr_serve.runtime.protocol`, which picks one by the body's shape.

Options (``score_threshold`` in [0, 1], ``max_detections`` in [1, limit]) may come as text (headers, query
parameters and form fields arrive as bytes) or as JSON numbers; ``None`` means "server default". Unknown keys
are ignored on purpose: TorchServe passes every query parameter and form field through, and ignoring what we
do not know lets clients add fields without breaking older servers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from codetr_serve.runtime.errors import (
    EmptyInput,
    InvalidBase64,
    InvalidJSON,
    InvalidOption,
    MissingImage,
    PayloadTooLarge,
)
from codetr_serve.runtime.settings import default

__all__ = [
    "IMAGE_FIELDS",
    "ParsedRequest",
    "RequestLimits",
    "RequestOptions",
    "decode_base64_text",
    "header",
    "option_fields",
    "options_from_headers",
    "parse_options",
    "read_payload",
    "request_id",
]

#: Request keys that may hold the image, in lookup order.
IMAGE_FIELDS: tuple[str, ...] = ("data", "image", "file", "body")
_SCORE_THRESHOLD = "score_threshold"
_MAX_DETECTIONS = "max_detections"
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits: encoded image size in bytes, the largest ``max_detections`` a client may ask and
    how many images one (KServe) request may carry."""

    max_bytes: int = field(default_factory=lambda: default("max_image_bytes"))
    max_detections_limit: int = field(default_factory=lambda: default("max_detections_limit"))
    max_images: int = field(default_factory=lambda: default("max_images_per_request"))

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_detections_limit < 1 or self.max_images < 1:
            raise ValueError(f"RequestLimits fields must be >= 1, got {self}")


@dataclass(frozen=True)
class RequestOptions:
    """Per-request options; ``None`` means "use the server's default"."""

    score_threshold: float | None = None
    max_detections: int | None = None


@dataclass(frozen=True)
class ParsedRequest:
    """What the rest of the pipeline needs from one image of a request: its encoded bytes and options."""

    image_bytes: bytes
    options: RequestOptions


def read_payload(request: Mapping[str, Any]) -> Any:
    """The first image field's value (see IMAGE_FIELDS), parsed if it holds JSON; raises MissingImage."""
    field = next((name for name in IMAGE_FIELDS if request.get(name) is not None), None)
    if field is None:
        raise MissingImage(fields_seen=(str(key) for key in request))
    return _as_json_if_json(request[field])


OPTION_HEADERS = {"x-score-threshold": _SCORE_THRESHOLD, "x-max-detections": _MAX_DETECTIONS}


def options_from_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {OPTION_HEADERS[name.lower()]: value for name, value in headers.items()
            if isinstance(name, str) and name.lower() in OPTION_HEADERS}


def option_fields(source: Mapping[str, Any]) -> dict[str, Any]:
    return {key: source[key] for key in (_SCORE_THRESHOLD, _MAX_DETECTIONS) if key in source}


def _as_json_if_json(value: Any) -> Any:
    """Parse bytes/str that hold JSON (first non-blank char ``{`` or ``[``); other values pass through.

    No supported image format starts with ``{`` or ``[``, so this cannot mistake an image for JSON.
    A structure TorchServe already parsed (``application/json``) is held to the same nesting bound.
    """
    if isinstance(value, list):
        raise _json_array_error()
    if isinstance(value, Mapping):
        check_json_depth(value)
        return value
    if not isinstance(value, bytes | bytearray | str):
        return value
    head = value.lstrip()[:1]
    if head not in (b"{", b"[", "{", "["):
        return value
    parsed = loads_json(value)
    if isinstance(parsed, list):
        raise _json_array_error()
    return parsed


#: Deepest JSON nesting accepted. Our bodies need 1-4 levels (a KServe v2 tensor a few more); Python's
#: parser recurses and gives up near 1000, so anything deeper than this is refused as a client error
#: before any code walks it.
MAX_JSON_DEPTH = 32
_JSON_EXAMPLE = 'send an object like {"image": "<base64>"}'


def loads_json(text: bytes | bytearray | str) -> Any:
    """``json.loads`` whose failures are InvalidJSON messages of ours (position, not Python's text)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"The body is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                          f"{exc.colno}); {_JSON_EXAMPLE}.") from exc
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"The body is not valid JSON (not UTF-8: bad byte at offset {exc.start}); encode "
                          f"it as UTF-8 and {_JSON_EXAMPLE}.") from exc
    except RecursionError as exc:
        raise _too_deep_error() from exc
    check_json_depth(parsed)
    return parsed


def check_json_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidJSON if objects/arrays nest deeper than ``max_depth``; iterative, so any depth is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, Mapping) else node
        if depth > max_depth:
            raise _too_deep_error(max_depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, Mapping | list))


def _too_deep_error(max_depth: int = MAX_JSON_DEPTH) -> InvalidJSON:
    return InvalidJSON(f"The JSON body nests objects or arrays more than {max_depth} levels deep; "
                       f"{_JSON_EXAMPLE}.")


def _json_array_error() -> InvalidJSON:
    # A bare array is no format we read: /predictions takes one image per request (TorchServe batches
    # requests), and KServe requests put their images inside an object ("instances" / "inputs").
    return InvalidJSON('The JSON body is an array; send one object per request, like {"image": "<base64>"}.')


def decode_base64_text(text: str, limits: RequestLimits) -> bytes:
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
            f"The image is not valid base64 ({_base64_problem(normalised)}); encode the whole file with "
            "standard base64."
        ) from exc
    if not decoded:
        raise EmptyInput('The "image" field decodes to 0 bytes; put the base64-encoded image file in it.')
    if len(decoded) > limits.max_bytes:
        raise PayloadTooLarge(len(decoded), limits.max_bytes)
    return decoded


def _base64_problem(text: str) -> str:
    """What is wrong with text that failed to decode, in our words (binascii's are terse)."""
    bad = _NOT_BASE64.search(text.rstrip("="))
    if bad:
        return f"character {bad.group()!r} at position {bad.start()} is not in the base64 alphabet"
    return "its length or padding is wrong: characters are missing or extra"


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


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
    allowed = f"an integer between 1 and {limits.max_detections_limit} (inclusive)"
    text = _option_text(value)
    number: int | None = None
    if text is not None:
        number = int(text) if _INTEGER.fullmatch(text) else None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or not 1 <= number <= limits.max_detections_limit:
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



#: A client's own id for a request: visible ASCII only, so it can never break a log line or a header.
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")


def request_id(headers: Mapping[str, Any], fallback: str | None = None) -> str:
    """The id a reply and its log lines carry: the client's X-Request-ID when valid, else ``fallback``
    (the front end's own id for the request, e.g. TorchServe's), else a new random one.

    An invalid header (control characters, spaces, non-ASCII, over 128 characters) is replaced rather than
    refused: the id exists to trace a request, not to fail it.
    """
    for candidate in (header(headers, REQUEST_ID_HEADER), fallback):
        if isinstance(candidate, str) and _REQUEST_ID.fullmatch(candidate):
            return candidate
    return uuid.uuid4().hex


def header(headers: Mapping[str, Any], name: str) -> str | None:
    """A header's value as text, looked up case-insensitively (TorchServe keeps the client's spelling)."""
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    return None
