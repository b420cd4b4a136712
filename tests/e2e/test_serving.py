"""End to end: archive.sh -> .mar -> a real TorchServe -> HTTP."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import encode_image
from tests.e2e.scrape import count_forwards
from tests.response_schema import validate

pytestmark = pytest.mark.e2e

JPEG = encode_image(320, 240, seed=11)


def assert_detections(response: requests.Response, width: int, height: int) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert validate(body) == []
    # Compact JSON, as the handler wrote it (a dict reply would come back indented by TorchServe's worker).
    assert response.content == json.dumps(body, separators=(",", ":")).encode()
    assert response.headers["Content-Type"].startswith("application/json")
    assert body["image"] == {"width": width, "height": height}
    assert body["detections"], "score_threshold 0 keeps every detection"
    return body


def test_raw_multipart_and_base64_requests(server):
    url, auth = server.predict_url(), server.auth()
    assert_detections(requests.post(url, data=JPEG, headers=auth, timeout=60), 320, 240)
    assert_detections(requests.post(url, files={"data": ("x.jpg", JPEG, "image/jpeg")}, headers=auth,
                                    timeout=60), 320, 240)
    png = encode_image(200, 150, "PNG", seed=12)
    assert_detections(requests.post(url, json={"image": base64.b64encode(png).decode()}, headers=auth,
                                    timeout=60), 200, 150)


def test_per_request_options(server):
    # TorchServe 0.12 drops the query string of /predictions: raw bodies carry options as headers.
    headed = requests.post(server.predict_url(), data=JPEG, timeout=60,
                           headers={**server.auth(), "X-Max-Detections": "3"})
    assert len(assert_detections(headed, 320, 240)["detections"]) == 3
    form = requests.post(server.predict_url(), files={"data": ("x.jpg", JPEG)}, data={"max_detections": "2"},
                         headers=server.auth(), timeout=60)
    assert len(assert_detections(form, 320, 240)["detections"]) == 2
    bad = requests.post(server.predict_url(), data=JPEG, timeout=60,
                        headers={**server.auth(), "X-Score-Threshold": "high"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_option"


def test_no_archive_folder_serves(server):
    response = requests.post(server.predict_url("co_detr_folder"), data=JPEG, headers=server.auth(),
                             timeout=60)
    assert_detections(response, 320, 240)


def _post(server, body: bytes) -> requests.Response:
    return requests.post(server.predict_url(), data=body, headers=server.auth(), timeout=120)


def test_corrupt_image_is_4xx_while_its_batch_mate_succeeds(server):
    corrupt = JPEG[: len(JPEG) // 3]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_post, server, body) for body in (JPEG, corrupt, JPEG, b"GIF89a....")]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 400, 200, 415]
    assert responses[1].json()["error"]["code"] == "undecodable_image"
    assert responses[3].json()["error"]["code"] == "unsupported_image_format"


def test_concurrent_requests_are_batched(server):
    def send() -> None:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: _post(server, JPEG), range(8)))
        assert all(r.status_code == 200 for r in responses)

    images, batches = count_forwards(server, send, images=8)
    assert images == 8
    assert batches < images, f"{images} images took {batches} forwards: no batching happened"


def test_requests_without_token_are_refused(server):
    # TorchServe answers a missing or wrong token with 400 InvalidKeyException (not 401).
    for headers in ({}, {"Authorization": "Bearer not-the-key"}):
        refused = requests.post(server.predict_url(), data=JPEG, headers=headers, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["type"] == "InvalidKeyException"
    management = requests.get(f"{server.client.management_url}/models", timeout=30)
    assert management.json()["type"] == "InvalidKeyException"
    assert requests.get(f"{server.client.management_url}/models", headers=server.auth("management"),
                        timeout=30).status_code == 200


def test_cli_client_prints_detections_and_draws_them(server, tmp_path, capsys):
    from PIL import Image

    from codetr_serve.tools.client import main

    image, drawing = tmp_path / "photo.jpg", tmp_path / "boxes.png"
    image.write_bytes(JPEG)
    key_file = str(server.root / "key_file.json")
    code = main([str(image), "--url", server.client.inference_url, "--key-file", key_file,
                 "--max-detections", "4", "--draw", str(drawing)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("4 detections (co_detr ")
    with Image.open(drawing) as drawn:
        assert drawn.size == (320, 240)
        assert drawn.tobytes() != Image.open(image).convert("RGB").tobytes()  # boxes were drawn
    assert main([str(image), "--url", server.client.inference_url, "--key-file", str(tmp_path / "none")]) == 1
