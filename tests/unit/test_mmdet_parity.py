"""The served path (bytes -> decode -> prepare -> batch -> model -> JSON) equals mmdet's own inference API."""

from __future__ import annotations

import numpy as np
import pytest
from mmdet.apis import inference_detector, init_detector

from codetr_serve.convert.model_dir import CONFIG_NAME
from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.settings import build_settings
from codetr_serve.runtime.weights import load_serving_weights
from tests.conftest import encode_image


@pytest.fixture(scope="module")
def both(tiny_model_dir):
    settings = build_settings({"score_threshold": 0.0, "warmup_runs": 0, "max_detections": 300},
                              model_dir=tiny_model_dir, device="cpu")
    core = DetectorCore(settings)
    core.setup()
    reference = init_detector(str(tiny_model_dir / CONFIG_NAME), checkpoint=None, device="cpu")
    state_dict, _ = load_serving_weights(tiny_model_dir / "weights")
    reference.load_state_dict(state_dict, strict=True)
    return core, reference.eval()


@pytest.mark.parametrize("size", [(320, 240), (203, 301), (640, 427)])
def test_served_detections_equal_mmdet_inference_detector(both, tmp_path, size):
    core, reference = both
    data = encode_image(*size, seed=size[0])
    path = tmp_path / "image.jpg"
    path.write_bytes(data)

    expected = inference_detector(reference, str(path)).pred_instances
    served = core.handle([{"body": data}])[0].body["detections"]

    assert len(served) == len(expected.scores)
    boxes = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in served])
    width, height = size
    clipped = expected.bboxes.numpy().copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    np.testing.assert_allclose([d["score"] for d in served], expected.scores.numpy(), atol=1e-4)
    np.testing.assert_array_equal([d["label_id"] for d in served], expected.labels.numpy())
    np.testing.assert_allclose(boxes, clipped, atol=0.01)
