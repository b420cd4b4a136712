"""The framework-free core: decode -> prepare -> batched forward -> JSON, with per-item errors."""

from __future__ import annotations

import time

import pytest
import torch
from mmcv.transforms import Compose

from codetr_serve.runtime.batch import canvas_groups
from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.decode import DecodeLimits, decode_image
from codetr_serve.runtime.model_loader import load_config
from codetr_serve.runtime.pipeline import PreparedImage, serving_pipeline
from codetr_serve.runtime.settings import build_settings
from tests.conftest import TINY_CONFIG, encode_image


@pytest.fixture(scope="module")
def core(tiny_model_dir) -> DetectorCore:
    settings = build_settings({"score_threshold": 0.0, "warmup_runs": 0}, model_dir=tiny_model_dir,
                              device="cpu", model_name="tiny", model_version="t1")
    detector = DetectorCore(settings)
    detector.setup()
    return detector


def test_torch_threads_setting_sets_the_workers_thread_count(tiny_model_dir):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        DetectorCore(build_settings({"torch_threads": wanted, "warmup_runs": 0}, model_dir=tiny_model_dir,
                                    device="cpu")).setup()
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_batch_of_mixed_sizes_equals_one_call_per_image(core):
    images = [encode_image(w, h, seed=s) for s, (w, h) in enumerate([(320, 240), (200, 300), (333, 250),
                                                                       (64, 48)])]
    together = core.handle([{"body": image} for image in images])
    alone = [core.handle([{"body": image}])[0] for image in images]
    for batched, single in zip(together, alone, strict=True):
        assert batched.status == single.status == 200
        a, b = batched.body["detections"], single.body["detections"]
        assert [d["label_id"] for d in a] == [d["label_id"] for d in b]
        assert [d["score"] for d in a] == pytest.approx([d["score"] for d in b], abs=1e-4)
        for x, y in zip(a, b, strict=True):
            assert list(x["box"].values()) == pytest.approx(list(y["box"].values()), abs=1e-3)


def test_outputs_are_deterministic(core):
    image = encode_image(300, 200, seed=9)
    assert core.handle([{"body": image}])[0].body["detections"] == \
        core.handle([{"body": image}])[0].body["detections"]


def test_bad_items_keep_their_place_and_stats_count_them(core):
    replies = core.handle([{"body": b""}, {"body": encode_image(100, 80, seed=1)}, {"nothing": b"x"},
                           {"body": b"\x89PNG\r\n\x1a\n broken"}])
    assert [r.status for r in replies] == [400, 200, 400, 400]
    assert [r.body.get("error", {}).get("code") for r in replies] == [
        "empty_input", None, "missing_image", "undecodable_image"]
    stats = core.last_stats
    assert stats.batch_size == 1
    assert dict(stats.rejected) == {"empty_input": 1, "missing_image": 1, "undecodable_image": 1}
    assert stats.detections_per_image == [len(replies[1].body["detections"])]


def test_wait_between_batches_is_the_time_since_the_last_replies(tiny_model_dir):
    fresh = DetectorCore(build_settings({"warmup_runs": 0}, model_dir=tiny_model_dir, device="cpu"))
    fresh.setup()
    image = {"body": encode_image(64, 48, seed=3)}
    fresh.handle([image])
    assert fresh.last_stats.wait_ms is None  # a worker's first batch has nothing to wait after
    time.sleep(0.2)
    fresh.handle([image])
    assert 200.0 <= fresh.last_stats.wait_ms < 2000.0
    fresh.handle([image])
    assert fresh.last_stats.wait_ms < 200.0  # measured from the previous batch's end, not the first one's


def test_response_uses_settings_and_per_request_options(core):
    image = encode_image(160, 120, seed=2)
    default, limited = core.handle([{"body": image}, {"body": image}], [{}, {"X-Max-Detections": "5"}])
    assert default.body["model"] == {"name": "tiny", "version": "t1"}
    assert len(default.body["detections"]) == min(core.settings.max_detections, core.detector.max_per_img)
    assert len(limited.body["detections"]) == 5
    assert default.body["image"] == {"width": 160, "height": 120}
    assert set(default.body["timings_ms"]) >= {"decode", "inference"}


def test_a_failing_forward_answers_every_item_with_json(core, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(core.detector.model, "predict", broken)
    replies = core.handle([{"body": encode_image(64, 64)}, {"body": b""}])
    assert [r.status for r in replies] == [500, 400]
    assert replies[0].body["error"]["code"] == "inference_failed"


def test_preparation_equals_mmdets_own_file_pipeline(tmp_path):
    """Our in-memory preparation gives exactly what mmdet's test pipeline computes from the file."""
    cfg = load_config(TINY_CONFIG)
    data = encode_image(257, 181, seed=4)
    path = tmp_path / "img.jpg"
    path.write_bytes(data)
    file_steps = [s for s in cfg.test_dataloader.dataset.pipeline if s["type"] != "LoadAnnotations"]
    reference = Compose(file_steps)({"img_path": str(path), "img_id": 0})
    from codetr_serve.runtime.pipeline import ImagePreparer

    ours = ImagePreparer(cfg)(decode_image(data, DecodeLimits()))
    assert torch.equal(ours.inputs, reference["inputs"])
    for key in ("img_shape", "ori_shape", "scale_factor"):
        assert ours.data_sample.metainfo[key] == reference["data_samples"].metainfo[key]


def test_serving_pipeline_drops_file_steps_and_overrides_scale():
    cfg = load_config(TINY_CONFIG)
    steps = serving_pipeline(cfg, test_scale=(640, 480))
    types = [step["type"].split(".")[-1] for step in steps]
    assert types[0] == "LoadImageFromNDArray"
    assert "LoadAnnotations" not in types and "LoadImageFromFile" not in types
    assert [s["scale"] for s in steps if s["type"] == "Resize"] == [(640, 480)]


def test_canvas_groups_pad_like_a_single_call():
    def item(h: int, w: int) -> PreparedImage:
        return PreparedImage(inputs=torch.zeros(3, h, w, dtype=torch.uint8), data_sample=None)

    groups = canvas_groups([item(240, 320), item(230, 310), item(300, 200), item(224, 320)], divisor=32)
    assert groups == {(256, 320): [0, 1], (320, 224): [2], (224, 320): [3]}
