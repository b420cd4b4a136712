"""KServe's v2 protocol (the Open Inference Protocol) over REST, for image files in one BYTES tensor.

TorchServe 0.12 serves it at ``POST /v2/models/<model>/infer`` and hands the handler the same body as
/predictions, so the body's shape picks this protocol: a JSON object with ``inputs`` (and no ``image``).

Request: exactly one input tensor, ``"datatype": "BYTES"``, one element per image, each the image file
base64-encoded (JSON strings cannot carry raw bytes; with Triton's binary extension, see binary_tensors.py,
an element is the raw file). ``shape`` must hold as many elements as ``data`` ([n] for n images; nested
shapes are read in row-major order). Options ``score_threshold`` / ``max_detections`` come from the
``X-Score-Threshold`` / ``X-Max-Detections`` headers, then the request's ``parameters``, then the input's
``parameters`` (later wins); they apply to every image. ``outputs``, if sent, may only name ``detections``.

Reply: ``model_name``, ``model_version``, the request's ``id`` when it sent one, and one output tensor
``{"name": "detections", "shape": [n], "datatype": "BYTES", "data": [...]}`` whose element i is a JSON
string: the detections document of image i, or ``{"error": {...}}`` for that image alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

from codetr_serve.runtime import codec
from codetr_serve.runtime.codec import ParsedRequest, RequestLimits
from codetr_serve.runtime.detections import ModelInfo
from codetr_serve.runtime.errors import (
    EmptyInput,
    InvalidEnvelope,
    InvalidJSON,
    PayloadTooLarge,
    ServingError,
    client_text,
)
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
from codetr_serve.runtime.protocol.binary_tensors import split_bytes_elements
from codetr_serve.runtime.wire_numbers import envelope_error, wire_int

OUTPUT_NAME = "detections"
#: The longest request "id" echoed back; an id is a name, and an unbounded one would make every reply as big.
MAX_ID_CHARS = 256
_EXAMPLE = ('{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
            '"data": ["<base64 of the image file>"]}]}')


class KServeV2(WireProtocol):
    name = "kserve-v2"
    route = "/v2/models/<model>/infer"
    example = _EXAMPLE
    option_sources = ("header", "request_parameters", "input_parameters")
    accepts_binary = True

    def claims(self, payload: Any) -> bool:
        return isinstance(payload, Mapping) and "inputs" in payload and "image" not in payload

    def parse(self, request: Mapping[str, Any], body: Body, headers: Mapping[str, Any],
              limits: RequestLimits) -> Envelope:
        payload = body.payload
        request_id = payload.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidEnvelope(f'"id" must be a string, got {json_type(request_id)}; send e.g. '
                                  '"id": "frame-42", or leave it out.')
        if request_id is not None and len(request_id) > MAX_ID_CHARS:  # the reply echoes it
            raise InvalidEnvelope(f'"id" is {len(request_id)} characters long; send at most {MAX_ID_CHARS} '
                                  '(the reply repeats it), e.g. "id": "frame-42".')
        tensor = _single_input(payload["inputs"])
        _check_outputs(payload.get("outputs"))
        elements = _elements(tensor, body.binary)
        image_count_within(len(elements), limits)
        sources = [codec.options_from_headers(headers), _parameters(payload, '"parameters"'),
                   _parameters(tensor, '"inputs[0].parameters"')]
        options = codec.parse_options({k: v for source in sources for k, v in source.items()}, limits)
        items = tuple(_element(index, element, options, limits) for index, element in enumerate(elements))
        return Envelope(self, items, {} if request_id is None else {"id": request_id})

    def format(self, envelope: Envelope, answers: Sequence[Any], model: ModelInfo) -> Answer:
        status, error = overall(answers)
        body: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
        if "id" in envelope.echo:
            body["id"] = envelope.echo["id"]
        data = [codec.dumps_json(answer.body).decode("utf-8") for answer in answers]
        body["outputs"] = [{"name": OUTPUT_NAME, "shape": [len(data)], "datatype": "BYTES", "data": data}]
        if error is None:
            return Answer(status, body)
        return Answer(status, {**self.error_body(error), **body}, error["code"])

    def error_body(self, error: Mapping[str, Any]) -> dict[str, Any]:
        return kserve_error_body(error)


def _single_input(inputs: Any) -> Mapping[str, Any]:
    if not isinstance(inputs, list) or not inputs:
        raise InvalidEnvelope(f'"inputs" must be a non-empty list of tensors; send {_EXAMPLE}.')
    if len(inputs) > 1:
        raise InvalidEnvelope(f'"inputs" has {len(inputs)} tensors; this model takes one BYTES tensor with '
                              'every image in its "data" (shape [n] for n images).')
    tensor = inputs[0]
    if not isinstance(tensor, Mapping):
        raise InvalidEnvelope(f'"inputs[0]" must be a tensor object; send {_EXAMPLE}.')
    missing = [key for key in ("name", "shape", "datatype") if key not in tensor]
    if missing:
        raise InvalidEnvelope(f'"inputs[0]" lacks {", ".join(missing)}; send {_EXAMPLE}.')
    if tensor["datatype"] != "BYTES":
        shown = client_text(tensor["datatype"], 20)
        raise InvalidEnvelope(f'"inputs[0].datatype" is {shown!r}; this model takes encoded image files: '
                              '"datatype": "BYTES", one base64 string per image (not decoded pixels).')
    return tensor


def _check_outputs(outputs: Any) -> None:
    if outputs is None:
        return
    names = [o.get("name") if isinstance(o, Mapping) else o for o in outputs] if isinstance(outputs, list) \
        else [outputs]
    unknown = [name for name in names if name != OUTPUT_NAME]
    if unknown:
        raise InvalidEnvelope(f'"outputs" asks for {client_text(unknown[0], 40)!r}; this model has one '
                              f'output, "{OUTPUT_NAME}": send "outputs": [{{"name": "{OUTPUT_NAME}"}}] or '
                              'leave it out.')


def _parameters(holder: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidEnvelope(f'{where} must be an object, like {{"score_threshold": 0.5}}.')
    return codec.option_fields(params)


def _elements(tensor: Mapping[str, Any], binary: bytes) -> list[Any]:
    """The tensor's elements in row-major order, checked against its shape."""
    shape = _shape(tensor["shape"])
    params = tensor.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, Mapping) else None
    if size is not None:
        size = _json_int(size, "binary_data_size", 0, 2**63 - 1, "the byte count of the tensor's data")
        if size != len(binary):
            raise InvalidEnvelope(f"binary_data_size is {size} but {len(binary)} bytes follow the JSON "
                                  "header; send the tensor's bytes exactly once.")
        elements = split_bytes_elements(binary)
    elif binary:
        raise InvalidEnvelope("Binary data follows the JSON header but no input declares binary_data_size.")
    elif not isinstance(tensor.get("data"), list):
        raise InvalidEnvelope('"inputs[0].data" must be a list of base64 strings, one per image; send '
                              f"{_EXAMPLE}.")
    else:
        elements = _flatten(tensor["data"])
    if not elements:
        raise InvalidEnvelope(f'"inputs[0]" holds no image; send at least one: {_EXAMPLE}.')
    _check_shape_holds(shape, len(elements))
    return elements


#: The deepest tensor we read: images come as shape [n]; nested lists are accepted up to this rank.
MAX_RANK = 8
_SHAPE_FIX = 'a list of non-negative integers, like [2] for two images'


def _shape(shape: Any) -> list[int]:
    """The declared shape, each dimension read by the bounded parser; at most MAX_RANK of them."""
    if not isinstance(shape, list):
        raise InvalidEnvelope(f'"inputs[0].shape" must be {_SHAPE_FIX}; got {client_text(shape)}.')
    if len(shape) > MAX_RANK:
        raise InvalidEnvelope(f'"inputs[0].shape" has {len(shape)} dimensions; this model reads at most '
                              f"{MAX_RANK}: send {_SHAPE_FIX}.")
    return [_json_int(dim, f'"inputs[0].shape[{index}]"', 0, 2**63 - 1,
                      f"a non-negative integer: the shape is {_SHAPE_FIX}")
            for index, dim in enumerate(shape)]


def _json_int(value: Any, field: str, minimum: int, maximum: int, expected: str) -> int:
    """A JSON integer field of the envelope; the protocol sends numbers, so text is refused."""
    return wire_int(value, field, minimum, maximum, refuse=envelope_error, expected=expected, text=False)


def _check_shape_holds(shape: list[int], count: int) -> None:
    """InvalidEnvelope unless the shape's element count is ``count``; multiplying stops as soon as the
    product passes ``count``, so a shape of huge dimensions costs nothing to refuse."""
    product, multiplied = 1, 0
    for dim in shape:
        product, multiplied = product * dim, multiplied + 1
        if product > count:
            break
    if product != count:
        holds = str(product) if multiplied == len(shape) else f"more than {count}"
        raise InvalidEnvelope(f'"inputs[0].shape" {client_text(str(shape), limit=60)} holds {holds} '
                              f'elements but "data" has {count}; send one element per image and "shape": '
                              f"[{count}].")


def _flatten(data: list[Any]) -> list[Any]:
    """The elements of a (nested) data list in row-major order, one level per pass: a level of only
    lists or of no lists is handled in C, so millions of elements cost no Python step each."""
    flat = data
    while list in (kinds := set(map(type, flat))):
        if kinds == {list}:
            flat = list(chain.from_iterable(flat))
        else:  # a ragged level (lists beside elements): rare, flattened the same way in Python
            flat = [item for value in flat for item in (value if type(value) is list else (value,))]
    return flat


def _element(index: int, element: Any, options: codec.RequestOptions, limits: RequestLimits) -> ImageItem:
    """One element -> its image, or the error that this image alone gets."""
    where = f"inputs[0].data[{index}]"
    try:
        if isinstance(element, bytes):  # the binary extension's raw file
            if not element:
                raise EmptyInput(f"{where} is empty; put the image file in it.")
            if len(element) > limits.max_bytes:
                raise PayloadTooLarge(len(element), limits.max_bytes)
            image = element
        elif isinstance(element, str):
            image = decode_element(element, limits, where)
        else:
            raise InvalidJSON(f"{where} is {json_type(element)}; each element is one image file as a "
                              "base64 string.")
    except ServingError as error:
        return error.detached()
    return ParsedRequest(image_bytes=image, options=options)
