"""Issue 19 part 2: client mistakes in numbers, shapes and headers are small 4xx replies, never a 500.

Each case goes through the whole request path the handler uses (``DetectorCore.handle``: protocol, parse,
reply, log line), so a case passes only if the client gets a 400 that names the field, the reply stays
small and the log line too. No model is loaded: a refused request never reaches one.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.settings import build_settings
from tests.conftest import encode_image

B64 = base64.b64encode(encode_image(32, 32, "PNG")).decode()
HUGE = "9" * 5000
#: A refused request's whole reply body, serialised; the messages are a sentence or two.
SMALL_REPLY = 1000


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> DetectorCore:
    return DetectorCore(build_settings({}, model_dir=tmp_path_factory.mktemp("none"), device="cpu"))


def v2(shape: Any, **tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": [B64], **tensor}]}


def as_bytes(value: Any) -> bytearray:
    """The body as TorchServe hands over one it could not (or did not) parse: the raw bytes."""
    return bytearray(value.encode() if isinstance(value, str) else json.dumps(value).encode())


V2_TEXT = json.dumps(v2([1])).encode()


def binary_head(size: str) -> bytes:
    """A binary tensor extension's JSON head declaring ``size`` (written as is) bytes of tensor data."""
    head = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": 0}}]}
    return json.dumps(head).replace('"binary_data_size": 0', '"binary_data_size": ' + size).encode()


def binary_body(size: str) -> bytearray:
    return bytearray(binary_head(size) + b"\x01\x00\x00\x00x")


def json_text(image: str, field: str, value: str) -> bytearray:
    """A JSON body written by hand, so a number can be longer than Python would write it."""
    return bytearray(f'{{"image": "{image}", "{field}": {value}}}'.encode())


# (case, request dict, headers, the code the client must get, a word its message must hold)
CASES = [
    ("JSON integer over 4,300 digits", {"body": json_text(B64, "seed", HUGE)}, {},
     "invalid_json", "digit"),
    ("score_threshold a 400-digit JSON integer, parsed by TorchServe",
     {"body": {"image": B64, "score_threshold": int("9" * 400)}}, {}, "invalid_option", "score_threshold"),
    ("score_threshold a 400-digit JSON integer, as bytes",
     {"body": json_text(B64, "score_threshold", "9" * 400)}, {}, "invalid_option",
     "score_threshold"),
    ("X-Max-Detections of 5,000 digits", {"body": {"image": B64}}, {"X-Max-Detections": HUGE},
     "invalid_option", "max_detections"),
    ("Inference-Header-Content-Length '²'", {"body": bytearray(V2_TEXT)},
     {"Inference-Header-Content-Length": "²"}, "invalid_envelope", "Inference-Header-Content-Length"),
    ("Inference-Header-Content-Length of 5,000 digits", {"body": bytearray(V2_TEXT)},
     {"Inference-Header-Content-Length": HUGE}, "invalid_envelope", "Inference-Header-Content-Length"),
    ("KServe v2 shape with 20,000 dimensions", {"body": v2([2] * 20_000)}, {}, "invalid_envelope", "shape"),
    ("KServe v2 shape with a 100-digit dimension", {"body": v2([10**100])}, {}, "invalid_envelope", "shape"),
    ("KServe v2 binary_data_size of 400 digits", {"body": binary_body("9" * 400)},
     {"Inference-Header-Content-Length": str(len(binary_head("9" * 400)))}, "invalid_envelope",
     "binary_data_size"),
]


def code_and_message(body: dict[str, Any]) -> tuple[str, str]:
    """Ours is {"error": {"code", "message"}}; KServe's is {"error": "<message>", "code"}."""
    error = body["error"]
    return (body["code"], error) if isinstance(error, str) else (error["code"], error["message"])


@pytest.mark.parametrize(("request_", "headers", "code", "names"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_a_client_mistake_in_a_number_is_a_small_400(core, caplog, request_, headers, code, names):
    with caplog.at_level(logging.INFO, logger="codetr_serve"):
        (reply,) = core.handle([request_], [headers])
    code_sent, message = code_and_message(reply.body)
    assert (reply.status, code_sent) == (400, code), reply.body
    assert names in message
    assert len(json.dumps(reply.body)) < SMALL_REPLY
    assert caplog.records and all(len(record.getMessage()) < SMALL_REPLY for record in caplog.records)
    assert not any(record.exc_info for record in caplog.records)  # no traceback logged


def test_kserve_v1_one_instance_with_a_huge_number_fails_alone(core):
    instances = [{"b64": B64, "score_threshold": int("9" * 400)}, {"b64": B64, "max_detections": HUGE},
                 {"b64": B64}]
    for body in ({"instances": instances}, as_bytes({"instances": instances})):
        items = core.decode([{"body": body}], [{}])
        codes = [getattr(image, "code", "image") for image in items[0].images]
        assert codes == ["invalid_option", "invalid_option", "model_not_ready"]  # no model: the good one
        # reached preparation, its own request-mates' mistakes did not stop it


def test_an_8_mb_hostile_shape_gets_a_small_reply_and_log_line(core, caplog):
    body = bytearray(json.dumps(v2([1] * 4_000_000)).encode())  # 12 MB of "1, "
    assert len(body) > 8_000_000
    with caplog.at_level(logging.INFO, logger="codetr_serve"):
        (reply,) = core.handle([{"body": body}], [{}])
    assert reply.status == 400 and reply.body["code"] == "invalid_envelope"
    assert len(json.dumps(reply.body)) < SMALL_REPLY
    assert all(len(record.getMessage()) < SMALL_REPLY for record in caplog.records)


def test_a_product_of_huge_dimensions_is_refused_without_being_computed(core):
    # 8 dimensions of 2**62: their product has 150 digits; the message holds none of it.
    (reply,) = core.handle([{"body": v2([2**62] * 8)}], [{}])
    assert reply.status == 400 and "more than 1 elements" in reply.body["error"]
    assert len(json.dumps(reply.body)) < SMALL_REPLY
