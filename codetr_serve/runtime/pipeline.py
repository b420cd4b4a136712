"""The config's test pipeline, turned into a function from a decoded image to model inputs.

We run mmdet's own transforms (resize, pack) so a served image is prepared exactly as `mmdet` would prepare
it at test time; only the file loading and annotation steps are swapped out for serving.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.config import Config

from codetr_serve.models.test_scale import apply_test_scale

# Steps that read files or ground truth: meaningless for an image that arrives in a request.
_SKIPPED_STEPS = {"LoadImageFromFile", "LoadAnnotations", "LoadPanopticAnnotations"}


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for batching.

    inputs: (3, h, w) uint8 tensor in the decoder's channel order (BGR), resized, not yet normalised.
    data_sample: mmdet DetDataSample carrying ori_shape / img_shape / scale_factor.
    """

    inputs: torch.Tensor
    data_sample: Any


def _step_type(step: dict) -> str:
    return str(step["type"]).split(".")[-1]


def serving_pipeline(cfg: Config, test_scale: tuple[int, int] | None = None) -> list[dict]:
    """The config's test pipeline with in-memory loading, no annotations and an optional scale override."""
    if test_scale is not None:
        cfg = apply_test_scale(copy.deepcopy(cfg), test_scale)  # the one place that rewrites Resize steps
    source = cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline") or cfg.get("test_pipeline")
    if not source:
        raise ValueError("the model config has no test pipeline (test_dataloader.dataset.pipeline or "
                         "test_pipeline): add one with Resize and PackDetInputs steps")
    steps = [copy.deepcopy(dict(step)) for step in source if _step_type(step) not in _SKIPPED_STEPS]
    return [dict(type="mmdet.LoadImageFromNDArray"), *steps]


class ImagePreparer:
    """Applies the serving pipeline to a BGR uint8 image of shape (H, W, 3)."""

    def __init__(self, cfg: Config, test_scale: tuple[int, int] | None = None) -> None:
        self.steps = serving_pipeline(cfg, test_scale)
        self._compose = Compose(self.steps)

    def __call__(self, image_bgr: np.ndarray) -> PreparedImage:
        packed = self._compose({"img": image_bgr, "img_id": 0})
        return PreparedImage(inputs=packed["inputs"], data_sample=packed["data_samples"])
