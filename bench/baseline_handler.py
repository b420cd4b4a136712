"""Baseline ONLY (never served): what MMDetection's own TorchServe handler does, written for comparison.

mmdet's handler builds the model with `init_detector` and calls `inference_detector` once per image, so a
TorchServe batch of N requests becomes N model calls. This one does the same with the same flattened
config and safetensors weights that our archive carries. One class per file: TorchServe's rule.
"""

from __future__ import annotations

from pathlib import Path

import mmcv
import torch
from ts.torch_handler.base_handler import BaseHandler


class MMDetStyleBaselineHandler(BaseHandler):
    """init_detector + inference_detector, one image at a time."""

    def initialize(self, context) -> None:
        """init_detector on the flattened config, then our safetensors weights (no pickle)."""
        from mmdet.apis import init_detector

        from codetr_serve.models import apply_test_scale
        from codetr_serve.runtime.model_loader import load_config
        from codetr_serve.runtime.weights import load_serving_weights

        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        section = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        if section.get("torch_threads"):
            torch.set_num_threads(int(section["torch_threads"]))  # same threads as our handler gets
        cfg = load_config(model_dir / "model_config.py")
        if section.get("test_scale"):
            apply_test_scale(cfg, section["test_scale"])
        gpu = properties.get("gpu_id")
        device = f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu"
        self.model = init_detector(cfg, checkpoint=None, device=device)
        state_dict, _ = load_serving_weights(model_dir / "weights")
        self.model.load_state_dict(state_dict)
        self.score_threshold = float(section.get("score_threshold", 0.3))
        self.initialized = True

    def preprocess(self, data):
        """Decode every request body to a BGR array, as mmdet's handler does."""
        return [mmcv.imfrombytes(bytes(row.get("data") or row.get("body"))) for row in data]

    def inference(self, data, *args, **kwargs):
        """One inference_detector call per image: N model calls for a batch of N."""
        from mmdet.apis import inference_detector

        return [inference_detector(self.model, image) for image in data]

    def postprocess(self, data):
        """Boxes, scores and labels above the score threshold, one dict per request."""
        replies = []
        for sample in data:
            found = sample.pred_instances
            keep = found.scores >= self.score_threshold
            rows = zip(found.bboxes[keep].tolist(), found.scores[keep].tolist(), found.labels[keep].tolist(),
                       strict=True)
            replies.append({"detections": [
                {"bbox": [round(v, 2) for v in box], "score": round(score, 4), "label": int(label)}
                for box, score, label in rows]})
        return replies
