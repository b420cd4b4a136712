"""KServe v1/v2 wire formats: what each accepts, what it refuses and how, and the replies it builds."""

from __future__ import annotations

import base64
import json
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from codetr_serve.runtime.codec import ParsedRequest, RequestLimits, RequestOptions
from codetr_serve.runtime.detections import ModelInfo
from codetr_serve.runtime.errors import (
    EmptyInput,
    InvalidBase64,
    InvalidEnvelope,
    InvalidJSON,
    InvalidOption,
    MissingImage,
    ServingError,
    TooManyImages,
    UndecodableImage,
    error_catalog,
)
from codetr_serve.runtime.protocol import KServeV1, KServeV2, Predictions, kserve_v2, parse_envelope

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
OTHER = b"\xff\xd8\xff" + bytes(100)
B64, B64_OTHER = (base64.b64encode(data).decode() for data in (IMAGE, OTHER))
LIMITS = RequestLimits(max_images=4)
MODEL = ModelInfo("co_detr", "7")


def parse(body: Any, headers: dict[str, str] | None = None, limits: RequestLimits = LIMITS):
    return parse_envelope({"body": body}, limits, headers)


def tensor(data: list[Any], shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "image", "shape": [len(data)] if shape is None else shape, "datatype": "BYTES",
            "data": data, **extra}


def images(envelope) -> list[Any]:
    return [item.image_bytes if isinstance(item, ParsedRequest) else item.code for item in envelope.items]


def refused(body: Any, error: type[ServingError], match: str, **kwargs: Any) -> ServingError:
    with pytest.raises(error, match=match) as caught:
        parse(body, **kwargs)
    return caught.value


# --- which protocol reads a body ---


@pytest.mark.parametrize(("body", "kind"), [
    ({"instances": [B64]}, KServeV1), (json.dumps({"instances": [B64]}).encode(), KServeV1),
    ({"inputs": [tensor([B64])]}, KServeV2),
    (bytearray(json.dumps({"inputs": [tensor([B64])]}).encode()), KServeV2),
    ({"image": B64, "instances": "ignored as before"}, Predictions), (bytearray(IMAGE), Predictions),
])
def test_the_body_shape_picks_the_protocol(body: Any, kind: type) -> None:
    envelope = parse(body)
    assert type(envelope.protocol) is kind
    assert images(envelope) == [IMAGE]


# --- KServe v1 ---


def test_v1_instance_forms_each_become_one_image_in_order() -> None:
    instances = [{"b64": B64}, B64_OTHER, {"data": B64}, {"image": {"b64": B64_OTHER}}]
    assert images(parse({"instances": instances})) == [IMAGE, OTHER, IMAGE, OTHER]


def test_v1_options_from_headers_and_per_instance_fields() -> None:
    envelope = parse({"instances": [{"b64": B64, "max_detections": 5}, B64]},
                     headers={"X-Score-Threshold": "0.6", "X-Max-Detections": "9"})
    assert [item.options for item in envelope.items] == [RequestOptions(0.6, 5), RequestOptions(0.6, 9)]


def test_v1_a_bad_instance_is_its_own_error_and_the_others_still_parse() -> None:
    instances = [B64, {"b64": "not base64!"}, {"picture": B64}, 7, {"b64": ""},
                 {"b64": B64, "score_threshold": 2}]
    envelope = parse({"instances": instances}, limits=RequestLimits(max_images=8))
    assert images(envelope) == [IMAGE, "invalid_base64", "missing_image", "invalid_json", "empty_input",
                                "invalid_option"]
    missing, wrong_type, empty = envelope.items[2], envelope.items[3], envelope.items[4]
    assert isinstance(missing, MissingImage) and 'no "b64" field' in missing.message
    assert isinstance(wrong_type, InvalidJSON) and "instances[3] is a number" in wrong_type.message
    assert isinstance(empty, EmptyInput) and "instances[4] is empty" in empty.message


@pytest.mark.parametrize(("instances", "match"), [
    ({"b64": B64}, "must be a list with one entry per image, got an object"),
    (B64, "must be a list .* got a string"), ([], "is empty; send at least one image"),
])
def test_v1_malformed_envelope_says_what_to_send(instances: Any, match: str) -> None:
    error = refused({"instances": instances}, InvalidEnvelope, match)
    assert error.status == 400 and '{"instances": [{"b64": ' in error.message


def test_too_many_images_is_413_and_says_to_split() -> None:
    error = refused({"instances": [B64] * 5}, TooManyImages, "5 images; the limit is 4 per request")
    assert (error.status, error.code) == (413, "too_many_images")
    refused({"inputs": [tensor([B64] * 5)]}, TooManyImages, "limit is 4")


def test_the_image_cap_is_a_validated_handler_setting(tmp_path) -> None:
    from codetr_serve.runtime.settings import SettingsError, build_settings

    assert build_settings({}, model_dir=tmp_path, device="cpu").max_images_per_request == 16
    with pytest.raises(SettingsError, match="max_images_per_request must be >= 1"):
        build_settings({"max_images_per_request": 0}, model_dir=tmp_path, device="cpu")


# --- KServe v2 ---


def test_v2_elements_in_row_major_order_with_options_and_id() -> None:
    body = {"id": "frame-1", "parameters": {"score_threshold": 0.2, "max_detections": 3},
            "inputs": [tensor([[B64, B64_OTHER], [B64_OTHER, B64]], shape=[2, 2],
                              parameters={"max_detections": 4, "content_type": "str"})],
            "outputs": [{"name": "detections"}]}
    envelope = parse(body, headers={"x-score-threshold": "0.9", "x-max-detections": "1"})
    assert images(envelope) == [IMAGE, OTHER, OTHER, IMAGE]
    assert {item.options for item in envelope.items} == {RequestOptions(0.2, 4)}
    assert envelope.echo == {"id": "frame-1"}


def _recursive_flatten(data: list) -> list:
    return [item for value in data for item in (_recursive_flatten(value) if isinstance(value, list)
                                                 else [value])]


@pytest.mark.parametrize("data", [[], [1, 2], [[1, 2], [3, 4]], [[[1], [2]], [[3], [4]]], [[], [[]], []],
                                  [1, [2, [3, [4]]], 5], [[1, 2], 3, [[4], 5]]],
                         ids=["empty", "flat", "rank-2", "rank-3", "empty-lists", "ragged-deep", "ragged"])
def test_data_is_flattened_in_row_major_order(data: list) -> None:
    assert kserve_v2._flatten(data) == _recursive_flatten(data)


@pytest.mark.parametrize(("inputs", "match"), [
    ([tensor([B64], datatype="FP32")], "datatype\" is 'FP32'; this model takes encoded image files"),
    ([tensor([B64, B64], shape=[3])], r"\[3\] holds 3 elements but \"data\" has 2; .*\"shape\": \[2\]"),
    ([tensor([B64], shape=[1, -1])], "list of non-negative integers"),
    ([{"name": "image", "datatype": "BYTES", "data": [B64]}], "lacks shape"),
    ([tensor([B64]), tensor([B64])], "has 2 tensors; this model takes one BYTES tensor"),
    ([tensor([])], "holds no image"), ([], "non-empty list of tensors"), ({"image": B64}, "non-empty list"),
    ([tensor(B64)], "must be a list of base64 strings"),
])
def test_v2_malformed_tensor_is_400_and_says_what_to_send(inputs: Any, match: str) -> None:
    error = refused({"inputs": inputs}, InvalidEnvelope, match)
    assert error.to_dict()["error"]["status"] == 400


@pytest.mark.parametrize(("extra", "error", "match"), [
    ({"outputs": [{"name": "boxes"}]}, InvalidEnvelope, "one output, \"detections\""),
    ({"id": 42}, InvalidEnvelope, "\"id\" must be a string, got a number"),
    ({"id": "x" * 1_000_000}, InvalidEnvelope, "\"id\" is 1000000 characters long; send at most 256"),
    ({"parameters": ["score_threshold"]}, InvalidEnvelope, "must be an object"),
    ({"parameters": {"max_detections": 0}}, InvalidOption, "between 1 and"),
])
def test_v2_bad_request_fields_fail_the_request(extra: dict, error: type, match: str) -> None:
    refused({"inputs": [tensor([B64])], **extra}, error, match)


def test_v2_a_bad_element_is_its_own_error() -> None:
    envelope = parse({"inputs": [tensor([B64, 12, "%%%", ""])]})
    assert images(envelope) == [IMAGE, "invalid_json", "invalid_base64", "empty_input"]
    assert "inputs[0].data[1] is a number" in envelope.items[1].message


# --- Triton's binary tensor extension ---


def binary_body(elements: list[bytes], declared: int | None = None,
                cut: int = 0) -> tuple[bytearray, dict[str, str]]:
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    blob = blob[: len(blob) - cut]
    size = len(blob) if declared is None else declared
    head = json.dumps({"inputs": [{"name": "image", "shape": [len(elements)], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": size}}]}).encode()
    return bytearray(head + blob), {"Inference-Header-Content-Length": str(len(head))}


def test_binary_elements_are_raw_image_files() -> None:
    body, headers = binary_body([IMAGE, OTHER])
    assert images(parse(body, headers)) == [IMAGE, OTHER]


def test_binary_tail_that_does_not_add_up_is_refused() -> None:
    body, headers = binary_body([IMAGE], declared=10)
    refused(body, InvalidEnvelope, "binary_data_size is 10 but", headers=headers)
    body, headers = binary_body([IMAGE], cut=5)
    refused(body, InvalidEnvelope, "declares 520 bytes but only 515 follow", headers=headers)
    refused(body, InvalidEnvelope, "Length is 'x'; send the JSON header's length in bytes",
            headers={"Inference-Header-Content-Length": "x"})
    v1 = json.dumps({"instances": [B64]}).encode()
    refused(bytearray(v1 + b"tail"), InvalidEnvelope, "only KServe v2 bodies",
            headers={"inference-header-content-length": str(len(v1))})


@pytest.mark.parametrize("head", [b"123", b"1.5", b"true", b"null", b'"abc"', b"9" * 108],
                         ids=["int", "float", "true", "null", "string", "108-digit-int"])
def test_a_json_header_that_is_a_scalar_is_a_4xx_not_a_server_fault(head: bytes) -> None:
    # A valid JSON document need not be an object: these once failed inside the depth check (a 500).
    refused(bytearray(head + b"tail"), InvalidEnvelope, "JSON header before the binary data is not an object",
            headers={"Inference-Header-Content-Length": str(len(head))})


@pytest.mark.parametrize("declared", ["²", "١٢", "１２", "12.0", "-1", "0x10", "9" * 5000, "", "1" * 33],
                         ids=["superscript", "arabic", "fullwidth", "decimal", "negative", "hex",
                              "5000-digits", "empty", "33-digits"])
def test_header_length_must_be_ascii_digits_within_the_body(declared: str) -> None:
    body, _ = binary_body([IMAGE])
    error = refused(body, InvalidEnvelope, "Inference-Header-Content-Length is",
                    headers={"Inference-Header-Content-Length": declared})
    assert len(error.message) < 400 and "from 0 to" in error.message


def test_header_length_with_blanks_around_its_digits_is_read() -> None:
    body, headers = binary_body([IMAGE])
    headers = {name: f" {value}\t" for name, value in headers.items()}
    assert images(parse(body, headers)) == [IMAGE]


@pytest.mark.parametrize(("shape", "match"), [
    ([1] * 9, "has 9 dimensions; this model reads at most 8"),
    ([2] * 20_000, "has 20000 dimensions"),
    ([10**30], r"shape\[0\]\" is \(an integer of about 3"),
    ([1, "1"], r"shape\[1\]\" is '1'; send a non-negative integer"),
    ([1, True], r"shape\[1\]\" is true"),
    ([1, 1.0], r"shape\[1\]\" is 1.0"),
    ([2**62] * 8, r"holds more than 1 elements"),
    ([0, 2**62], r"holds 0 elements"),
    ({"n": 1}, r"must be a list of non-negative integers, like \[2\] for two images; got an object"),
])
def test_v2_shape_is_read_by_the_bounded_parser(shape: Any, match: str) -> None:
    error = refused({"inputs": [tensor([B64], shape=shape)]}, InvalidEnvelope, match)
    assert len(error.message) < 400


def test_v2_shapes_up_to_rank_8_still_work() -> None:
    assert images(parse({"inputs": [tensor([B64], shape=[1] * 8)]})) == [IMAGE]
    assert images(parse({"inputs": [tensor([B64, B64_OTHER], shape=[1, 2, 1])]})) == [IMAGE, OTHER]


@pytest.mark.parametrize("size", ["10", 10.0, True, -1, 10**400], ids=["text", "float", "bool", "negative",
                                                                      "400-digits"])
def test_binary_data_size_must_be_a_json_integer(size: Any) -> None:
    body, headers = binary_body([IMAGE])
    head_length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(bytes(body[:head_length]))
    head["inputs"][0]["parameters"]["binary_data_size"] = size
    text = json.dumps(head).encode()
    error = refused(bytearray(text + body[head_length:]), InvalidEnvelope, "binary_data_size is",
                    headers={"Inference-Header-Content-Length": str(len(text))})
    assert len(error.message) < 200


def test_v1_an_instance_with_a_huge_number_fails_alone() -> None:
    instances = [{"b64": B64, "score_threshold": int("9" * 400)}, {"b64": B64, "max_detections": "9" * 5000},
                 {"b64": B64_OTHER, "max_detections": 10**4000}, {"b64": B64}]
    for body in ({"instances": instances}, bytearray(json.dumps({"instances": instances}).encode())):
        envelope = parse(body)
        assert images(envelope) == ["invalid_option", "invalid_option", "invalid_option", IMAGE]
        assert all(len(item.message) < 200 for item in envelope.items[:3])


def test_requests_built_by_tritonclient_parse_in_both_encodings() -> None:
    from tritonclient.http import InferInput
    from tritonclient.http._utils import _get_inference_request

    for binary in (False, True):
        tensor_in = InferInput("image", [2], "BYTES")
        data = [IMAGE, OTHER] if binary else [B64.encode(), B64_OTHER.encode()]
        tensor_in.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        body, json_size = _get_inference_request([tensor_in], "req-9", None, 0, False, False, 0, None, None)
        headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
        envelope = parse(bytearray(body), headers)
        assert images(envelope) == [IMAGE, OTHER] and envelope.echo == {"id": "req-9"}


# --- replies ---


def answer(status: int, body: dict | None = None, reason: str = "OK") -> SimpleNamespace:
    return SimpleNamespace(status=status, body=body or {"detections": []}, reason=reason)


def error_answer(error: ServingError) -> SimpleNamespace:
    return answer(error.status, error.to_dict(), error.code)


def test_v1_reply_is_200_with_errors_in_place_when_one_image_succeeded() -> None:
    envelope = parse({"instances": [B64, B64]})
    bad = UndecodableImage()
    status, body, _ = envelope.format([answer(200, {"detections": [1]}), error_answer(bad)], MODEL)
    assert (status, body) == (200, {"predictions": [{"detections": [1]}, bad.to_dict()]})


def test_v2_reply_carries_one_json_string_per_image_and_echoes_the_id() -> None:
    envelope = parse({"id": "a1", "inputs": [tensor([B64, B64])]})
    bad = InvalidBase64()
    status, body, _ = envelope.format([answer(200, {"detections": [2]}), error_answer(bad)], MODEL)
    assert status == 200
    assert body == {"model_name": "co_detr", "model_version": "7", "id": "a1", "outputs": [
        {"name": "detections", "shape": [2], "datatype": "BYTES", "data": [
            '{"detections":[2]}', json.dumps(bad.to_dict(), separators=(",", ":"))]}]}
    assert "id" not in parse({"inputs": [tensor([B64])]}).format([answer(200)], MODEL)[1]


@pytest.mark.parametrize(("errors", "status", "code"), [
    ([InvalidBase64()], 400, "invalid_base64"),
    ([UndecodableImage(), UndecodableImage()], 400, "undecodable_image"),
    ([TooManyImages(1, 1), TooManyImages(1, 1)], 413, "too_many_images"),
    ([UndecodableImage(), EmptyInput()], 400, "all_images_failed"),
    ([UndecodableImage(), ServingError()], 500, "serving_error"),
])
def test_when_every_image_failed_the_reply_fails_with_a_top_level_error(errors, status, code) -> None:
    for body in ({"instances": [B64] * len(errors)}, {"inputs": [tensor([B64] * len(errors))]}):
        got_status, reply, reason = parse(body).format([error_answer(e) for e in errors], MODEL)
        assert got_status == status and reason == code == reply["code"] and error_catalog()[code] == status
        # The Open Inference Protocol's error shape: a message string that clients can print.
        assert isinstance(reply["error"], str) and len(reply["error"]) > 20
        assert ("predictions" in reply) != ("outputs" in reply)  # the per-image errors are still there


# --- through the core: a request's images join the batch's forward and come back to their request ---


def same_detections(got: list[dict], want: list[dict]) -> bool:
    """Equal up to float noise: batched and single forwards may round the last digit differently."""
    return [d["label_id"] for d in got] == [d["label_id"] for d in want] and all(
        x["score"] == pytest.approx(y["score"], abs=1e-3)
        and list(x["box"].values()) == pytest.approx(list(y["box"].values()), abs=1e-2)
        for x, y in zip(got, want, strict=True))


def test_images_of_all_requests_share_one_forward_and_regroup_per_request(tiny_model_dir) -> None:
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.settings import build_settings
    from tests.conftest import encode_image

    core = DetectorCore(build_settings({"score_threshold": 0.0, "warmup_runs": 0}, model_dir=tiny_model_dir,
                                       device="cpu", model_name="tiny", model_version="t1"))
    core.setup()
    a, b, c, d = (encode_image(w, h, seed=s) for s, (w, h) in enumerate([(320, 240), (240, 320), (300, 200),
                                                                         (200, 150)]))
    enc = [base64.b64encode(x).decode() for x in (a, b, c, d)]
    requests = [{"body": {"instances": [enc[0], {"b64": enc[1][:100]}, {"b64": enc[2]}]}},
                {"body": bytearray(d)},
                {"body": {"id": "r3", "inputs": [tensor([enc[3], enc[0]])]}},
                {"body": {"inputs": [tensor([B64], datatype="UINT8")]}}]
    v1, raw, v2, bad = core.handle(requests)
    assert core.last_stats.batch_size == 5, "the five good images went through the model together"
    alone = {key: core.handle([{"body": bytearray(image)}])[0].body["detections"]
             for key, image in zip("acd", (a, c, d), strict=True)}

    assert v1.status == 200
    first, broken, third = v1.body["predictions"]
    assert broken["error"]["code"] == "undecodable_image"
    assert same_detections(first["detections"], alone["a"])
    assert same_detections(third["detections"], alone["c"])
    assert raw.status == 200 and same_detections(raw.body["detections"], alone["d"])
    assert v2.status == 200 and v2.body["id"] == "r3" and v2.body["model_name"] == "tiny"
    from_v2 = [json.loads(s)["detections"] for s in v2.body["outputs"][0]["data"]]
    assert same_detections(from_v2[0], alone["d"]) and same_detections(from_v2[1], alone["a"])
    assert not same_detections(alone["a"], alone["d"]), "the images must be told apart for this test"
    assert (bad.status, bad.reason, bad.body["code"]) == (400, "invalid_envelope", "invalid_envelope")
    assert "BYTES" in bad.body["error"], "a refused KServe request names the fix in a plain message"
