"""Issue 19 part 2 through a real TorchServe: client mistakes in numbers are small 400s, never 500s.

The unit tests hand the handler's request dict to the core; these check the same cases as TorchServe 0.12
delivers them (its own JSON parse of application/json bodies, its byte-per-character header decoding).
"""

from __future__ import annotations

import base64
import json

import pytest
import requests

from tests.conftest import encode_image

pytestmark = pytest.mark.e2e

JPEG = encode_image(160, 120, seed=19)
B64 = base64.b64encode(JPEG).decode()
HUGE = "9" * 5000
SMALL_REPLY = 1000


def v2_url(server) -> str:
    return f"{server.client.inference_url}/v2/models/co_detr/infer"


def v2_body(shape: list[int]) -> dict:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": [B64]}]}


def code_of(body: dict) -> str:
    """Ours: {"error": {"code"}}; KServe's: {"error": "<message>", "code"}."""
    return body["code"] if isinstance(body["error"], str) else body["error"]["code"]


@pytest.mark.parametrize(("route", "data", "headers", "code"), [
    ("predictions", JPEG, {"X-Max-Detections": HUGE}, "invalid_option"),
    ("predictions", f'{{"image": "{B64}", "score_threshold": {"9" * 400}}}', {}, "invalid_option"),
    ("predictions", f'{{"image": "{B64}", "seed": {HUGE}}}', {}, "invalid_json"),
    # requests sends header text as latin-1: '²' is the single byte B2, which TorchServe hands on as '²'
    ("v2", json.dumps(v2_body([1])), {"Inference-Header-Content-Length": "²"}, "invalid_envelope"),
    ("v2", json.dumps(v2_body([1])), {"Inference-Header-Content-Length": HUGE}, "invalid_envelope"),
    ("v2", json.dumps(v2_body([2] * 20_000)), {}, "invalid_envelope"),
    ("v2", json.dumps(v2_body([1] * 2_000_000)), {}, "invalid_envelope"),  # a 6 MB shape
    # a JSON header that is a number, not an object (was a 500 from the depth check: make fuzz found it)
    ("v2", "9" * 108 + json.dumps(v2_body([1])), {"Inference-Header-Content-Length": "108"},
     "invalid_envelope"),
], ids=["header-5000-digits", "threshold-400-digits", "json-int-5000-digits", "length-superscript",
        "length-5000-digits", "shape-20000-dims", "shape-6-MB", "json-header-a-number"])
def test_a_mistake_in_a_number_is_a_small_400(server, route, data, headers, code):
    url = server.predict_url() if route == "predictions" else v2_url(server)
    # A JSON content type makes TorchServe parse the body itself, and a parsed body has no binary tail to
    # split: the binary extension's bodies travel as octet-stream, as tritonclient sends them.
    binary = isinstance(data, bytes) or "Inference-Header-Content-Length" in headers
    content_type = "application/octet-stream" if binary else "application/json"
    response = requests.post(url, data=data, timeout=120,
                             headers={**server.auth(), "Content-Type": content_type, **headers})
    assert response.status_code == 400, response.text[:300]
    assert code_of(response.json()) == code
    assert len(response.content) < SMALL_REPLY


def test_kserve_v1_one_instance_with_a_huge_number_fails_alone(server):
    url = f"{server.client.inference_url}/v1/models/co_detr:predict"
    body = f'{{"instances": [{{"b64": "{B64}", "score_threshold": {"9" * 400}}}, {{"b64": "{B64}"}}]}}'
    response = requests.post(url, data=body, timeout=120,
                             headers={**server.auth(), "Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    bad, good = response.json()["predictions"]
    assert bad["error"]["code"] == "invalid_option" and "score_threshold" in bad["error"]["message"]
    assert good["image"] == {"width": 160, "height": 120}
