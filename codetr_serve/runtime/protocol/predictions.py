"""TorchServe's own /predictions format: one image per request, its reply the detections document itself.

Accepted forms (first match wins, fields looked up in this order: ``data``, ``image``, ``file``, ``body``):

* raw image bytes as the body (TorchServe puts them under ``body``, some clients' under ``data``);
* a multipart form file field ``data`` (``image`` and ``file`` also accepted);
* a JSON object ``{"image": "<base64>"}``, either already parsed by TorchServe (``application/json``) or as
  bytes / text that hold JSON; the base64 may be a ``data:image/...;base64,`` URL;
* a text body (``text/*``) holding just the base64 string or data URL.

Options (``score_threshold``, ``max_detections``) come from the ``X-Score-Threshold`` /
``X-Max-Detections`` headers, then request fields (multipart form fields), then fields of the JSON object;
later sources win, since the JSON field travels with the image. TorchServe 0.12 does not pass a
/predictions query string on to handlers, so headers are how a raw-body request sets options.

This protocol claims every body the others do not, so it is listed last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from codetr_serve.runtime import codec
from codetr_serve.runtime.codec import ParsedRequest, RequestLimits
from codetr_serve.runtime.detections import ModelInfo
from codetr_serve.runtime.errors import EmptyInput, InvalidJSON, MissingImage, PayloadTooLarge
from codetr_serve.runtime.protocol.base import Answer, Body, Envelope, WireProtocol

_JSON_IMAGE_KEY = "image"


class Predictions(WireProtocol):
    """The default format. Any problem fails the request (it has one image), with that error as its reply."""

    name = "predictions"
    route = "/predictions/<model>"
    example = '{"image": "<base64 of the image file>"}'
    option_sources = ("header", "form_field", "json_field")

    def claims(self, payload: Any) -> bool:
        return True

    def parse(self, request: Mapping[str, Any], body: Body, headers: Mapping[str, Any],
              limits: RequestLimits) -> Envelope:
        return Envelope(self, (parse_payload(request, body.payload, limits, headers),))

    def format(self, envelope: Envelope, answers: Sequence[Any], model: ModelInfo) -> Answer:
        (answer,) = answers
        return Answer(answer.status, answer.body, answer.reason)


def parse_request(request: Mapping[str, Any], limits: RequestLimits,
                  headers: Mapping[str, str] | None = None) -> ParsedRequest:
    """The encoded image and the options of one /predictions request dict.

    Raises MissingImage, EmptyInput, InvalidJSON, InvalidBase64, PayloadTooLarge or InvalidOption.
    """
    return parse_payload(request, codec.read_payload(request), limits, headers)


def parse_payload(request: Mapping[str, Any], payload: Any, limits: RequestLimits,
                  headers: Mapping[str, str] | None = None) -> ParsedRequest:
    """:func:`parse_request` on a payload already read with ``codec.read_payload`` (parsed once)."""
    sources = [codec.options_from_headers(headers or {}), codec.option_fields(request)]
    if isinstance(payload, Mapping):
        image_bytes = _image_from_json(payload, limits)
        sources.append(codec.option_fields(payload))
    else:
        image_bytes = _image_from_value(payload, limits)
    options = codec.parse_options({k: v for source in sources for k, v in source.items()}, limits)
    return ParsedRequest(image_bytes=image_bytes, options=options)


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
    return codec.decode_base64_text(encoded, limits)


def _image_from_value(value: Any, limits: RequestLimits) -> bytes:
    """Raw bytes are the image itself; text is base64 (or a data URL)."""
    if isinstance(value, str):
        return codec.decode_base64_text(value, limits)
    if not isinstance(value, bytes | bytearray):
        raise MissingImage(f"The image field holds a {type(value).__name__}, not image bytes.")
    if not value:
        raise EmptyInput()
    if len(value) > limits.max_bytes:
        raise PayloadTooLarge(len(value), limits.max_bytes)
    return bytes(value)
