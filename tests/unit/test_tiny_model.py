"""The tiny Co-DINO config: builds, predicts through mmdet's interface, is deterministic and batch-safe.

It runs the whole inference path of the real architecture (backbone, neck, CoDINOHead with the
Co-DINO transformer, soft-NMS post-processing) with random weights in well under a second.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "config" / "co_dino_tiny.py"

# Two images of different sizes, as the tiny test_scale (320, 192) would resize them:
# 640x360 -> 320x180 and 400x300 -> 256x192 (w x h). Shapes below are (h, w).
ORI_SHAPES = [(360, 640), (300, 400)]
IMG_SHAPES = [(180, 320), (192, 256)]
BATCH_SHAPE = (192, 320)


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config.fromfile(str(TINY))  # custom_imports registers codetr_serve.models


def build(cfg: Config, **overrides: object) -> torch.nn.Module:
    from mmdet.registry import MODELS

    init_default_scope("mmdet")
    model_cfg = cfg.model.copy()
    model_cfg.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()  # seeded random weights; the tiny config has nothing pretrained
    return model.eval()


@pytest.fixture(scope="module")
def model(cfg: Config) -> torch.nn.Module:
    return build(cfg)


def make_samples(indices: list[int]) -> list[DetDataSample]:
    """Data samples with the metainfo CoDETR.predict needs for images padded to BATCH_SHAPE."""
    samples = []
    for i in indices:
        (h, w), (oh, ow) = IMG_SHAPES[i], ORI_SHAPES[i]
        samples.append(
            DetDataSample(
                metainfo=dict(
                    img_shape=(h, w),
                    ori_shape=(oh, ow),
                    scale_factor=(w / ow, h / oh),
                    batch_input_shape=BATCH_SHAPE,
                    pad_shape=BATCH_SHAPE,
                )
            )
        )
    return samples


def make_inputs(indices: list[int]) -> torch.Tensor:
    """Normalised images (as DetDataPreprocessor makes them), zero-padded to BATCH_SHAPE."""
    generator = torch.Generator().manual_seed(1234)
    images = [torch.randn(3, *shape, generator=generator) for shape in IMG_SHAPES]
    batch = torch.zeros(len(indices), 3, *BATCH_SHAPE)
    for row, i in enumerate(indices):
        h, w = IMG_SHAPES[i]
        batch[row, :, :h, :w] = images[i]
    return batch


def predict(model: torch.nn.Module, indices: list[int]) -> list[DetDataSample]:
    with torch.no_grad():
        return model.predict(make_inputs(indices), make_samples(indices), rescale=True)


def detection_rows(sample: DetDataSample) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 5) rows [x1/W, y1/H, x2/W, y2/H, score] in the original image, and (N,) labels."""
    oh, ow = sample.ori_shape
    pred = sample.pred_instances
    boxes = pred.bboxes / torch.tensor([ow, oh, ow, oh], dtype=pred.bboxes.dtype)
    return torch.cat([boxes, pred.scores[:, None]], dim=1), pred.labels


def assert_same_detections(a: DetDataSample, b: DetDataSample, atol: float = 1e-4) -> None:
    """Same detections up to ``atol``, matched one-to-one (near-equal scores may swap order)."""
    rows_a, labels_a = detection_rows(a)
    rows_b, labels_b = detection_rows(b)
    assert rows_a.shape == rows_b.shape
    cost = (rows_a[:, None, :] - rows_b[None, :, :]).abs().amax(dim=-1)
    cost[labels_a[:, None] != labels_b[None, :]] = float("inf")
    best, match = cost.min(dim=1)
    assert float(best.max()) <= atol, f"largest deviation {float(best.max()):.3g}"
    assert len(set(match.tolist())) == len(match), "detections do not match one-to-one"


def test_tiny_model_has_the_official_structure(model: torch.nn.Module, cfg: Config) -> None:
    assert type(model).__name__ == "CoDETR"
    assert type(model.query_head).__name__ == "CoDINOHead"
    assert [type(h).__name__ for h in model.roi_head] == ["CoStandardRoIHead"]
    assert [type(h).__name__ for h in model.bbox_head] == ["CoATSSHead"]
    assert model.with_rpn and model.with_query_head and model.with_bbox and not model.with_mask
    assert len(cfg.metainfo["classes"]) == cfg.model.query_head.num_classes == 20
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_predict_returns_detections_in_original_coordinates(model: torch.nn.Module, cfg: Config) -> None:
    max_dets = cfg.model.test_cfg[0].max_per_img
    for sample, (oh, ow) in zip(predict(model, [0, 1]), ORI_SHAPES, strict=True):
        pred = sample.pred_instances
        n = len(pred)
        assert 0 < n <= max_dets
        assert pred.bboxes.shape == (n, 4) and pred.bboxes.dtype == torch.float32
        assert pred.scores.shape == (n,) and pred.labels.shape == (n,)
        assert pred.labels.dtype == torch.int64
        assert bool(((pred.labels >= 0) & (pred.labels < 20)).all())
        assert bool(((pred.scores >= 0) & (pred.scores <= 1)).all())
        assert bool((pred.bboxes[:, 0::2] >= 0).all() and (pred.bboxes[:, 0::2] <= ow + 1e-3).all())
        assert bool((pred.bboxes[:, 1::2] >= 0).all() and (pred.bboxes[:, 1::2] <= oh + 1e-3).all())


def test_predict_is_deterministic(model: torch.nn.Module) -> None:
    first, second = predict(model, [0, 1]), predict(model, [0, 1])
    for a, b in zip(first, second, strict=True):
        for key in ("bboxes", "scores", "labels"):
            assert torch.equal(a.pred_instances[key], b.pred_instances[key]), key


def test_batch_equals_per_image(model: torch.nn.Module) -> None:
    """Batching must not leak between images. Each single image is padded to the same batch
    shape: the neck's GroupNorm statistics include padded pixels, so only equal padding is
    comparable (the reference implementation behaves the same)."""
    batched = predict(model, [0, 1])
    for i in (0, 1):
        assert_same_detections(batched[i], predict(model, [i])[0])


def test_predict_fills_missing_batch_input_shape(model: torch.nn.Module) -> None:
    """Callers that bypass DetDataPreprocessor may leave batch_input_shape out."""
    samples = make_samples([0, 1])
    for sample in samples:
        del sample.batch_input_shape
    with torch.no_grad():
        results = model.predict(make_inputs([0, 1]), samples)
    for got, want in zip(results, predict(model, [0, 1]), strict=True):
        assert tuple(got.batch_input_shape) == BATCH_SHAPE
        assert torch.equal(got.pred_instances.bboxes, want.pred_instances.bboxes)


def test_forward_modes(model: torch.nn.Module) -> None:
    inputs, samples = make_inputs([0, 1]), make_samples([0, 1])
    with torch.no_grad():
        via_forward = model(inputs, make_samples([0, 1]), mode="predict")
        raw = model(inputs, samples, mode="tensor")
    for a, b in zip(via_forward, predict(model, [0, 1]), strict=True):
        assert torch.equal(a.pred_instances.scores, b.pred_instances.scores)
    assert isinstance(raw, tuple) and all(isinstance(t, torch.Tensor) for t in raw[:2])
    assert raw[0].shape[:2] == (1, 2)  # (decoder layers, batch, queries, classes)


def test_serving_pipeline_end_to_end(model: torch.nn.Module, cfg: Config) -> None:
    """The config's own test pipeline + data preprocessor feed model.test_step."""
    steps = [dict(type="LoadImageFromNDArray"), *cfg.test_pipeline[1:]]
    pipeline = Compose(steps)
    rng = np.random.default_rng(0)
    packed = [
        pipeline(dict(img=rng.integers(0, 255, (*shape, 3), dtype=np.uint8), img_id=i))
        for i, shape in enumerate(ORI_SHAPES)
    ]
    data = dict(inputs=[p["inputs"] for p in packed], data_samples=[p["data_samples"] for p in packed])
    with torch.no_grad():
        results = model.test_step(data)
    assert [tuple(r.img_shape) for r in results] == IMG_SHAPES
    assert all(len(r.pred_instances) > 0 for r in results)


def test_forward_is_fast(model: torch.nn.Module) -> None:
    predict(model, [0, 1])  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        predict(model, [0, 1])
        timings.append(time.perf_counter() - start)
    # About 0.3 s of CPU time for the two images (measured single-threaded); the loose bound
    # (best of three, so a busy CI machine does not fail it) only catches gross regressions.
    assert min(timings) < 10.0, f"tiny forward took {min(timings):.2f} s"


def test_training_is_refused_clearly(model: torch.nn.Module) -> None:
    inputs, samples = make_inputs([0, 1]), make_samples([0, 1])
    with pytest.raises(NotImplementedError, match="codetr-serve implements inference only"):
        model.loss(inputs, samples)
    with pytest.raises(NotImplementedError, match="inference only"):
        model(inputs, samples, mode="loss")
    with pytest.raises(NotImplementedError, match="inference only"):
        model.bbox_head[0].loss(None, samples)
    with pytest.raises(NotImplementedError, match="inference only"):
        model.roi_head[0].loss(None, None, samples)


@pytest.mark.parametrize("eval_module", ["one-stage", "two-stage"])
def test_other_eval_modules_are_refused_at_build(cfg: Config, eval_module: str) -> None:
    with pytest.raises(NotImplementedError, match="inference only"):
        build(cfg, eval_module=eval_module)


def test_unknown_eval_module_is_rejected(cfg: Config) -> None:
    with pytest.raises(ValueError, match="eval_module"):
        build(cfg, eval_module="detr2")
