"""What every wire format shares: where the body is, limits, options, base64, JSON and request ids.

The wire formats themselves (TorchServe's /predictions, KServe v1 and v2) are one class each in
:mod:`codetr_serve.runtime.protocol`, which picks one by the body's shape.

Options (``score_threshold`` in [0, 1], ``max_detections`` in [1, limit]) may come as text (headers and
multipart form fields arrive as bytes) or as JSON numbers, read by the one bounded number parser
(:mod:`codetr_serve.runtime.wire_numbers`); ``None`` means "server default". Unknown keys are ignored on
purpose: TorchServe passes every form field through (and, in 0.12, no query string at all), and ignoring
what we do not know lets clients add fields without breaking older servers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import Any

import orjson

from codetr_serve.runtime.errors import (
    EmptyInput,
    InvalidBase64,
    InvalidJSON,
    MissingImage,
    PayloadTooLarge,
)
from codetr_serve.runtime.settings import default
from codetr_serve.runtime.wire_numbers import json_int, option_error, wire_float, wire_int

__all__ = [
    "IMAGE_FIELDS",
    "JSON_CONTENT_TYPE",
    "ParsedRequest",
    "RequestLimits",
    "RequestOptions",
    "decode_base64_text",
    "dumps_json",
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
    """Parse bytes/str that hold a JSON object (first non-blank char ``{``); refuse an array (``[``)
    unparsed; other values pass through.

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
    if head in (b"[", "["):  # always refused, so before parsing: json.loads of a large array costs seconds
        raise _json_array_error()
    if head not in (b"{", "{"):
        return value
    return loads_json(value)


#: Deepest JSON nesting accepted. Our bodies need 1-4 levels (a KServe v2 tensor a few more); Python's
#: parser recurses and gives up near 1000, so anything deeper than this is refused as a client error
#: before any code walks it.
MAX_JSON_DEPTH = 32
_JSON_EXAMPLE = 'send an object like {"image": "<base64>"}'


def loads_json(text: bytes | bytearray | str) -> Any:
    """``json.loads`` whose failures are InvalidJSON messages of ours (position, not Python's text)."""
    try:
        parsed = json.loads(text, parse_int=json_int)
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


#: The Content-Type of every reply body (TorchServe 0.12 sends none unless the handler sets one).
JSON_CONTENT_TYPE = "application/json"


def dumps_json(value: Any) -> bytes:
    """A reply body as compact UTF-8 JSON (non-ASCII characters as themselves, not ``\\u`` escapes).

    Handed to TorchServe as bytes, it goes out as is. A dict would be serialised by TorchServe's worker with
    ``json.dumps(indent=2)``, which takes CPython's pure-Python encoder and nearly doubles the bytes. orjson
    writes a tiny batch's replies in a tenth of the standard library's time (docs/tuning.md, "JSON replies");
    what it refuses (an echoed integer beyond 64 bits) goes through the standard library instead.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def check_json_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidJSON if objects/arrays nest deeper than ``max_depth``; iterative, so any depth is safe.

    Walked one level at a time with C-level iterators only: a 64 MB body of small objects is millions of
    values, and a Python-level step per value cost seconds of worker time before the request could be
    refused. Only objects and arrays are walked: a scalar (a JSON document may be one) has no depth, and
    walking a top-level string would visit its characters.
    """
    if isinstance(value, Mapping):
        level = [value if type(value) is dict else dict(value)]
    elif isinstance(value, list):
        level = [value if type(value) is list else list(value)]
    else:
        return
    for _ in range(max_depth):
        if not level:
            return
        is_container = map(_CONTAINER_TYPES.__contains__, map(type, _children(level)))
        level = list(compress(_children(level), is_container))
    if level:
        raise _too_deep_error(max_depth)


#: What JSON parsers (json, orjson, TorchServe's worker) build for objects and arrays.
_CONTAINER_TYPES = frozenset({dict, list})


def _children(level: list[Any]) -> Iterator[Any]:
    """Every value held by the objects and arrays in ``level`` (each call a fresh iterator)."""
    lists = compress(level, map(frozenset({list}).__contains__, map(type, level)))
    dicts = compress(level, map(frozenset({dict}).__contains__, map(type, level)))
    return chain(chain.from_iterable(lists), chain.from_iterable(map(dict.values, dicts)))


def _too_deep_error(max_depth: int = MAX_JSON_DEPTH) -> InvalidJSON:
    return InvalidJSON(f"The JSON body nests objects or arrays more than {max_depth} levels deep; "
                       f"{_JSON_EXAMPLE}.")


def _json_array_error() -> InvalidJSON:
    # A bare array is no format we read: /predictions takes one image per request (TorchServe batches
    # requests), and KServe requests put their images inside an object ("instances" / "inputs").
    return InvalidJSON('The JSON body is an array; send one object per request, like {"image": "<base64>"}.')


def decode_base64_text(text: str, limits: RequestLimits) -> bytes:
    """Decode standard or URL-safe base64, optionally a data URL; lenient on blanks and padding.

    The size is estimated and an oversize image refused before anything is copied: joining the blanks away
    first once took 47 MB to refuse an 8 MB string.
    """
    start = _base64_start(text)
    chars = len(text) - start - sum(text.count(blank, start) for blank in _BASE64_BLANKS)
    if chars == 0:
        raise EmptyInput('The "image" field is empty; put the base64-encoded image file in it.')
    estimated = chars * 3 // 4  # 4 base64 characters carry 3 bytes
    if estimated > limits.max_bytes + 3:
        raise PayloadTooLarge(estimated, limits.max_bytes)
    try:
        encoded = (text[start:] if start else text).encode("ascii")
    except UnicodeEncodeError as exc:
        raise InvalidBase64(f"The image is not valid base64 (character {exc.object[exc.start]!r} is not in "
                            "the base64 alphabet); encode the whole file with standard base64.") from None
    compact = encoded.translate(_URL_SAFE_TO_STANDARD, delete=_BASE64_BLANKS.encode())
    del encoded
    if len(compact) % 4:
        compact += b"=" * (-len(compact) % 4)
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64(
            f"The image is not valid base64 ({_base64_problem(compact)}); encode the whole file with "
            "standard base64."
        ) from exc
    if not decoded:
        raise EmptyInput('The "image" field decodes to 0 bytes; put the base64-encoded image file in it.')
    if len(decoded) > limits.max_bytes:
        raise PayloadTooLarge(len(decoded), limits.max_bytes)
    return decoded


#: What may sit between base64 characters (MIME line breaks, pretty-printed JSON) and carries no data.
_BASE64_BLANKS = " \t\r\n\f\v"
_URL_SAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_DATA_URL = re.compile(r"[ \t\r\n\f\v]*data:", re.IGNORECASE)
#: A data URL's header (``data:image/jpeg;base64,``) ends within this many characters.
_DATA_URL_HEADER_CHARS = 256


def _base64_problem(compact: bytes) -> str:
    """What is wrong with text that failed to decode, in our words (binascii's are terse)."""
    bad = _NOT_BASE64.search(compact.rstrip(b"="))
    if bad:
        return (f"character {chr(bad.group()[0])!r} at position {bad.start()} is not in the base64 "
                "alphabet")
    return "its length or padding is wrong: characters are missing or extra"


def _base64_start(text: str) -> int:
    """Where the base64 starts: after the comma of ``data:image/png;base64,AAAA``, else 0 (no copy made)."""
    if not _DATA_URL.match(text):
        return 0
    comma = text.find(",", 0, _DATA_URL_HEADER_CHARS)
    if comma < 0 or not text[:comma].rstrip().lower().endswith(";base64"):
        raise InvalidBase64(
            "Only base64 data URLs are accepted; use the form 'data:image/jpeg;base64,<base64>'."
        )
    return comma + 1


def parse_options(source: Mapping[str, Any], limits: RequestLimits) -> RequestOptions:
    """Read and validate ``score_threshold`` and ``max_detections``; other keys are ignored."""
    threshold = source.get(_SCORE_THRESHOLD)
    max_dets = source.get(_MAX_DETECTIONS)
    return RequestOptions(
        score_threshold=None if threshold is None else wire_float(
            threshold, _SCORE_THRESHOLD, 0.0, 1.0, refuse=option_error),
        max_detections=None if max_dets is None else wire_int(
            max_dets, _MAX_DETECTIONS, 1, limits.max_detections_limit, refuse=option_error),
    )


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
