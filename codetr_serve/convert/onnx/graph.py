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

import contextlib
import copy
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codetr_serve.models.transformer import geometry
from codetr_serve.models.transformer.geometry import level_valid_ratios

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


def flatten_levels(self, mlvl_feats: list[Tensor], mlvl_masks: list[Tensor], mlvl_pos_embeds: list[Tensor]):
    """``CoDinoTransformer.flatten_levels`` with ``spatial_shapes`` built from symbolic sizes.

    The model builds it with ``torch.as_tensor(shapes)``, which makes ``torch.export`` specialise every
    level's height and width to the example's (the graph would then only take that one image size).
    """
    shapes = [tuple(feat.shape[-2:]) for feat in mlvl_feats]
    tokens = torch.cat([feat.flatten(2).transpose(1, 2) for feat in mlvl_feats], 1)
    padding_mask = torch.cat([mask.flatten(1) for mask in mlvl_masks], 1)
    pos = torch.cat([pos.flatten(2).transpose(1, 2) + self.level_embeds[lvl].view(1, 1, -1)
                     for lvl, pos in enumerate(mlvl_pos_embeds)], 1)
    spatial_shapes = torch.stack([torch.stack([torch.full((), size, dtype=torch.long, device=tokens.device)
                                               for size in shape]) for shape in shapes])
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([level_valid_ratios(mask) for mask in mlvl_masks], 1)
    return tokens, padding_mask, pos, shapes, spatial_shapes, level_start_index, valid_ratios


def _cell_grid(height, width, start: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """``geometry._cell_grid`` with ``arange + start``: the same floats (the step is exactly 1), and unlike
    ``linspace`` it keeps ``height``/``width`` symbolic under ``torch.export``."""
    rows = torch.arange(height, dtype=torch.float32, device=device) + start
    cols = torch.arange(width, dtype=torch.float32, device=device) + start
    return torch.meshgrid(rows, cols, indexing="ij")


@contextlib.contextmanager
def exportable_geometry() -> Iterator[None]:
    """Route the transformer's geometry helpers to :func:`_cell_grid` while the graph runs or is traced."""
    original = geometry._cell_grid
    geometry._cell_grid = _cell_grid
    try:
        yield
    finally:
        geometry._cell_grid = original


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
        head.transformer.flatten_levels = types.MethodType(flatten_levels, head.transformer)
        self.test_cfg = dict(head.test_cfg)

    def forward(self, images: Tensor, img_shapes: Tensor, scale_factors: Tensor) -> tuple[Tensor, ...]:
        with exportable_geometry():
            return self._detect(images, img_shapes, scale_factors)

    def _detect(self, images: Tensor, img_shapes: Tensor, scale_factors: Tensor) -> tuple[Tensor, ...]:
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
                          self.test_cfg, head.num_query)
