"""The per-item guarantee past decoding: a forward or a reply that fails answers only its own images."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from codetr_serve.runtime.batch import PendingImage
from codetr_serve.runtime.codec import RequestOptions
from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.errors import InvalidJSON
from codetr_serve.runtime.settings import build_settings
from tests.conftest import REPO

# Test-only model whose forward raises IndexError for 2:1 frames (see the config's comment).
FAULT_CONFIG = REPO / "tests" / "e2e" / "configs" / "co_dino_tiny_wide_fault.py"


@pytest.fixture
def core(tmp_path) -> DetectorCore:
    # encode() needs settings only: no model is loaded, so this runs in milliseconds.
    return DetectorCore(build_settings({"score_threshold": 0.0}, model_dir=tmp_path, device="cpu"))


def pending() -> PendingImage:
    return PendingImage(prepared=None, options=RequestOptions(), image_size=(100, 200), decode_ms=1.0)


def instances(boxes: int, scores: int) -> SimpleNamespace:
    """What the model's predict returns per image (mmdet InstanceData: bboxes, scores, labels)."""
    return SimpleNamespace(bboxes=torch.tensor([[10.0, 10.0, 50.0, 60.0]] * boxes),
                           scores=torch.full((scores,), 0.9), labels=torch.zeros(scores, dtype=torch.long))


def test_a_reply_that_cannot_be_built_answers_only_its_own_item(core):
    items = [pending(), pending(), InvalidJSON("bad body"), pending()]
    # The second output is inconsistent (2 boxes, 3 scores): build_response raises ValueError for it.
    outputs = [instances(1, 1), instances(2, 3), items[2], instances(1, 1)]
    replies = core.encode(items, outputs)
    assert [r.status for r in replies] == [200, 500, 400, 200]
    assert replies[0].body["detections"][0]["score"] == pytest.approx(0.9)
    assert replies[3].body["detections"]
    error = replies[1].body["error"]
    assert error["code"] == "inference_failed" and "build the response" in error["message"]
    assert "ValueError" not in error["message"] and "shape" not in error["message"]
    assert replies[2].body["error"]["code"] == "invalid_json"


def test_a_wrong_number_of_outputs_answers_every_item_with_json(core):
    replies = core.encode([pending(), pending()], [instances(1, 1)])
    assert [r.status for r in replies] == [500, 500]
    assert all("wrong number of results" in r.body["error"]["message"] for r in replies)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(width).integers(0, 255, (height, width, 3), np.uint8)).save(
        buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def faulty_core(tmp_path_factory) -> DetectorCore:
    from codetr_serve.convert.model_dir import pack_model_dir

    model_dir = tmp_path_factory.mktemp("faulty")
    pack_model_dir(config_path=FAULT_CONFIG, checkpoint_path=None, out_dir=model_dir, seed=0)
    core = DetectorCore(build_settings({"score_threshold": 0.0, "warmup_runs": 0}, model_dir=model_dir,
                                       device="cpu"))
    core.setup()
    return core


def test_a_raising_forward_fails_only_its_canvas_group(faulty_core):
    # 320x240 and 640x480 share a canvas and run; the 2:1 frames (another canvas) make the forward raise.
    replies = faulty_core.handle([{"body": png(320, 240)}, {"body": png(400, 200)}, {"body": png(640, 480)},
                                  {"body": png(200, 100)}])
    assert [r.status for r in replies] == [200, 500, 200, 500]
    for failed in (replies[1], replies[3]):
        assert failed.body["error"]["code"] == "inference_failed"
        assert "IndexError" not in failed.body["error"]["message"]
    assert faulty_core.handle([{"body": png(320, 240)}])[0].status == 200  # and the core keeps serving
