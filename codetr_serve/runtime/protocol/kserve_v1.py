"""KServe's v1 protocol (TF Serving's REST shape): ``{"instances": [...]}`` -> ``{"predictions": [...]}``.

TorchServe 0.12 serves it at ``POST /v1/models/<model>:predict`` and hands the handler the same body as
/predictions, so the body's shape picks this protocol: a JSON object with ``instances`` (and no ``image``).

Each instance is one image: ``{"b64": "<base64>"}`` (TF Serving's convention for binary values), a plain
base64 string, or an object whose ``data`` or ``image`` field holds the base64 string or ``{"b64": ...}``
(the shape TorchServe's and KServe's image examples send). An instance object may carry its own
``score_threshold`` / ``max_detections``; the ``X-Score-Threshold`` / ``X-Max-Detections`` headers set them
for every instance. ``predictions[i]`` answers ``instances[i]``: its detections document, or
``{"error": {...}}`` for that image alone. A request that fails as a whole is answered as KServe's own
servers answer, ``{"error": "<message>"}`` (plus our ``code``). See docs/schema.md for the status rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from codetr_serve.runtime import codec
from codetr_serve.runtime.codec import ParsedRequest, RequestLimits
from codetr_serve.runtime.detections import ModelInfo
from codetr_serve.runtime.errors import InvalidEnvelope, InvalidJSON, MissingImage, ServingError
from codetr_serve.runtime.protocol.base import (
    Answer,
    Body,
    Envelope,
    ImageItem,
    WireProtocol,
    decode_element,
    image_count_within,
    json_type,
    kserve_error_body,
    overall,
)

_EXAMPLE = '{"instances": [{"b64": "<base64 of the image file>"}]}'
#: Instance fields that may hold the image, in lookup order.
IMAGE_KEYS = ("b64", "data", "image")


class KServeV1(WireProtocol):
    name = "kserve-v1"
    route = "/v1/models/<model>:predict"
    example = _EXAMPLE
    option_sources = ("header", "instance_field")

    def claims(self, payload: Any) -> bool:
        return isinstance(payload, Mapping) and "instances" in payload and "image" not in payload

    def parse(self, request: Mapping[str, Any], body: Body, headers: Mapping[str, Any],
              limits: RequestLimits) -> Envelope:
        instances = body.payload["instances"]
        if not isinstance(instances, list):
            raise InvalidEnvelope(f'"instances" must be a list with one entry per image, got '
                                  f'{json_type(instances)}; send {_EXAMPLE}.')
        if not instances:
            raise InvalidEnvelope(f'"instances" is empty; send at least one image: {_EXAMPLE}.')
        image_count_within(len(instances), limits)
        shared = codec.options_from_headers(headers)
        return Envelope(self, tuple(_instance(index, instance, shared, limits)
                                    for index, instance in enumerate(instances)))

    def format(self, envelope: Envelope, answers: Sequence[Any], model: ModelInfo) -> Answer:
        status, error = overall(answers)
        body: dict[str, Any] = {"predictions": [answer.body for answer in answers]}
        if error is None:
            return Answer(status, body)
        return Answer(status, {**self.error_body(error), **body}, error["code"])

    def error_body(self, error: Mapping[str, Any]) -> dict[str, Any]:
        return kserve_error_body(error)


def _instance(index: int, instance: Any, shared: Mapping[str, Any], limits: RequestLimits) -> ImageItem:
    """One instance -> its image and options, or the error that this image alone gets."""
    where = f"instances[{index}]"
    try:
        if isinstance(instance, str):
            encoded, own = instance, {}
        elif isinstance(instance, Mapping):
            encoded, own = _encoded_image(instance, where), codec.option_fields(instance)
        else:
            raise InvalidJSON(f"{where} is {json_type(instance)}; each instance is one image, sent as "
                              f'{{"b64": "<base64>"}} or as a base64 string.')
        image = decode_element(encoded, limits, where)
        options = codec.parse_options({**shared, **own}, limits)
    except ServingError as error:
        return error.detached()
    return ParsedRequest(image_bytes=image, options=options)


def _encoded_image(instance: Mapping[str, Any], where: str) -> str:
    key = next((key for key in IMAGE_KEYS if key in instance), None)
    if key is None:
        raise MissingImage(f'{where} has no "b64" field; send each instance as {{"b64": "<base64>"}} (or a '
                           'base64 string).', fields_seen=instance.keys())
    value = instance[key]
    if key != "b64" and isinstance(value, Mapping) and "b64" in value:
        value = value["b64"]  # TF Serving's named binary input: {"image": {"b64": "..."}}
    if not isinstance(value, str):
        raise InvalidJSON(f'{where}.{key} must be a base64 string, got {json_type(value)}; send '
                          f'{{"b64": "<base64>"}}.')
    return value
