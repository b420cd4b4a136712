"""The Co-DINO inference graph as one module with tensor inputs, ready for ``torch.onnx.export``.

``CoDETR.predict`` reads each image's size from Python metadata (``img_shape``, ``scale_factor``) and
returns a list of variable-length results; an exported graph needs those as tensors. :class:`CoDinoGraph`
runs the same modules on the same weights (backbone, neck, positional encoding, transformer, last decoder
layer's branches) and takes the metadata as inputs:

* ``images`` float32 (B, 3, H, W): what ``DetDataPreprocessor`` produces (RGB, normalised, zero-padded at
  the bottom/right to the batch canvas);
* ``img_shapes`` int64 (B, 2): ``(h, w)`` of each resized image inside the canvas;
* ``scale_factors`` float32 (B, 2): ``(w, h)`` resize factors, to map boxes back to the original image.

Outputs: ``boxes`` (B, K, 4) xyxy in original pixels, ``scores`` (B, K), ``labels`` (B, K) int64 and
``num_detections`` (B,) int64, K = ``max_per_img`` (see :mod:`.postprocess`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .msda import LevelShapes, replace_msda
from .postprocess import detections

INPUT_NAMES = ("images", "img_shapes", "scale_factors")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


def padding_masks(feats: list[Tensor], img_shapes: Tensor, canvas: tuple) -> list[Tensor]:
    """``CoDINOHead.padding_masks`` from a (B, 2) tensor: True on padding, nearest-resized per level."""
    rows = torch.arange(canvas[0], device=img_shapes.device)[None, :, None]
    cols = torch.arange(canvas[1], device=img_shapes.device)[None, None, :]
    padded = (rows >= img_shapes[:, 0, None, None]) | (cols >= img_shapes[:, 1, None, None])
    image_mask = padded.to(feats[0].dtype)
    return [F.interpolate(image_mask[None], size=feat.shape[-2:]).to(torch.bool).squeeze(0) for feat in feats]


class CoDinoGraph(nn.Module):
    """A CoDETR (query head inference path) with exportable deformable attention and post-processing.

    The detector is deep-copied: the caller's model keeps mmcv's attention modules.
    """

    def __init__(self, detector: nn.Module, msda_kernel: str = "gridsample") -> None:
        super().__init__()
        self.detector = copy.deepcopy(detector).eval()
        self.levels = LevelShapes()
        self.replaced = replace_msda(self.detector, self.levels, msda_kernel)
        head = self.detector.query_head
        self.test_cfg = dict(head.test_cfg)

    def forward(self, images: Tensor, img_shapes: Tensor, scale_factors: Tensor) -> tuple[Tensor, ...]:
        detector = self.detector
        head = detector.query_head
        feats = list(detector.extract_feat(images))
        self.levels.shapes = [tuple(feat.shape[-2:]) for feat in feats]
        masks = padding_masks(feats, img_shapes, tuple(images.shape[-2:]))
        positions = [head.positional_encoding(mask) for mask in masks]
        states, references = head.transformer(
            feats, masks, None, positions, reg_branches=head.reg_branches, cls_branches=head.cls_branches)[:2]
        last = states.shape[0] - 1
        cls_logits, boxes = head.layer_outputs(last, states[last].transpose(0, 1), references[last])
        return detections(cls_logits, boxes, img_shapes, scale_factors, head.num_classes, head.use_sigmoid,
                          self.test_cfg)
