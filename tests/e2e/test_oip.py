"""End to end: KServe v1/v2 (Open Inference Protocol) on TorchServe's own routes, and a client not ours.

TorchServe 0.12 serves ``/v1/models/<m>:predict`` and ``/v2/models/<m>/infer`` itself and hands the handler
the JSON body exactly as on /predictions; these tests prove it by getting envelope replies on both routes.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import encode_image
from tests.e2e.scrape import count_forwards
from tests.response_schema import validate

pytestmark = pytest.mark.e2e

JPEG = encode_image(320, 240, seed=21)
PNG = encode_image(200, 150, "PNG", seed=22)
CORRUPT = JPEG[: len(JPEG) // 3]
B64 = {name: base64.b64encode(data).decode() for name, data in
       (("jpeg", JPEG), ("png", PNG), ("corrupt", CORRUPT))}


def v1_url(server, model: str = "co_detr") -> str:
    return f"{server.client.inference_url}/v1/models/{model}:predict"


def v2_url(server, model: str = "co_detr") -> str:
    return f"{server.client.inference_url}/v2/models/{model}/infer"


def v2_body(*images: str, **extra) -> dict:
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": list(images)}],
            **extra}


def assert_detections(document: dict, width: int, height: int) -> None:
    assert validate(document) == [], document
    assert document["image"] == {"width": width, "height": height}
    assert document["detections"], "score_threshold 0 keeps every detection"


def test_v1_route_answers_each_instance_with_its_errors_in_place(server):
    body = {"instances": [{"b64": B64["jpeg"]}, {"b64": B64["corrupt"]}, B64["png"]]}
    response = requests.post(v1_url(server), json=body, headers=server.auth(), timeout=120)
    assert response.status_code == 200, response.text
    first, broken, third = response.json()["predictions"]
    assert_detections(first, 320, 240)
    assert broken["error"]["code"] == "undecodable_image" and broken["error"]["status"] == 400
    assert_detections(third, 200, 150)


def test_v2_route_answers_one_json_string_per_image_and_echoes_the_id(server):
    headers = {**server.auth(), "X-Max-Detections": "2"}
    body = v2_body(B64["png"], "not base64!", B64["jpeg"], id="frame-7")
    response = requests.post(v2_url(server), json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert (reply["model_name"], reply["id"]) == ("co_detr", "frame-7") and reply["model_version"]
    [output] = reply["outputs"]
    assert (output["name"], output["shape"], output["datatype"]) == ("detections", [3], "BYTES")
    png, bad, jpeg = (json.loads(element) for element in output["data"])
    assert_detections(png, 200, 150)
    assert_detections(jpeg, 320, 240)
    assert len(png["detections"]) == len(jpeg["detections"]) == 2, "header options reach v2 requests"
    assert bad["error"]["code"] == "invalid_base64"


@pytest.mark.parametrize(("route", "body", "status", "code"), [
    ("v2", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400,
     "invalid_envelope"),
    ("v2", v2_body(B64["jpeg"], B64["png"]) | {"outputs": [{"name": "boxes"}]}, 400, "invalid_envelope"),
    ("v1", {"instances": {"b64": B64["jpeg"]}}, 400, "invalid_envelope"),
    ("v1", {"instances": [B64["jpeg"]] * 17}, 413, "too_many_images"),
    ("v1", {"instances": [{"b64": B64["corrupt"]}, {"b64": B64["corrupt"]}]}, 400, "undecodable_image"),
])
def test_a_request_that_cannot_work_gets_a_4xx_with_a_json_error(server, route, body, status, code):
    url = v1_url(server) if route == "v1" else v2_url(server)
    response = requests.post(url, json=body, headers=server.auth(), timeout=120)
    assert response.status_code == status, response.text
    reply = response.json()  # the Open Inference Protocol's shape: a message string, plus our stable code
    assert reply["code"] == code and isinstance(reply["error"], str)
    assert "Traceback" not in reply["error"] and len(reply["error"]) > 30


def test_concurrent_kserve_requests_share_forwards(server):
    posts = [(v1_url(server), {"instances": [B64["jpeg"]]})] * 3 + \
            [(v2_url(server), v2_body(B64["jpeg"], B64["jpeg"]))] * 3

    def send() -> None:
        with ThreadPoolExecutor(len(posts)) as pool:
            responses = list(pool.map(lambda post: requests.post(post[0], json=post[1], headers=server.auth(),
                                                                  timeout=120), posts))
        assert [r.status_code for r in responses] == [200] * len(posts)

    images, batches = count_forwards(server, send, images=9)
    assert images == 9
    assert batches < len(posts), f"{len(posts)} requests took {batches} forwards: they never shared one"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-extension"])
def test_tritonclient_talks_to_the_v2_route(server, binary):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.client.inference_url.removeprefix("http://"),
                                          network_timeout=120.0)
    try:
        # Only .infer: TorchServe has no /v2/health or model metadata routes (they answer 404).
        tensor = triton.InferInput("image", [2], "BYTES")
        data = [JPEG, PNG] if binary else [B64["jpeg"].encode(), B64["png"].encode()]
        tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        result = client.infer("co_detr", [tensor], request_id="tc-1", headers=server.auth())
        assert result.get_response()["id"] == "tc-1"
        jpeg, png = (json.loads(element) for element in result.as_numpy("detections"))
        assert_detections(jpeg, 320, 240)
        assert_detections(png, 200, 150)

        pixels = triton.InferInput("image", [1, 2], "FP32")
        pixels.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("co_detr", [pixels], headers=server.auth())
        # The OIP's error shape: tritonclient reads the message and prints it like any server's error.
        assert refused.value.status() == "400"
        assert "BYTES" in refused.value.message() and "BYTES" in str(refused.value)
    finally:
        client.close()
