"""Coordinate helpers of the Co-DINO transformer (pure functions, no parameters).

Conventions used throughout the query head:

* padding masks are ``bool`` with ``True`` on padded cells (the mmdet convention);
* boxes are normalised ``(cx, cy, w, h)`` in ``[0, 1]`` relative to the *valid* (unpadded)
  part of the image, so a padded image and the same image alone give the same boxes;
* ``valid_ratios`` are ``(w_ratio, h_ratio)`` of the valid part per level, used to move
  between "valid-image" and "padded-feature-map" normalised coordinates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Deformable-DETR proposal cells within this margin of the border are unusable as anchors.
PROPOSAL_MARGIN = 0.01
# Side length (normalised) of a level-0 proposal; each coarser level doubles it.
BASE_PROPOSAL_SIZE = 0.05


def level_valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of each padded feature map that holds real image content.

    Args:
        mask: Padding mask of one level, shape (B, H, W), ``True`` on padding.

    Returns:
        Tensor of shape (B, 2): ``(valid_w / W, valid_h / H)`` as float32.
    """
    height, width = mask.shape[-2:]
    valid_rows = (~mask[:, :, 0]).sum(1)
    valid_cols = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_cols.float() / width, valid_rows.float() / height], -1)


def _cell_grid(height: int, width: int, start: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row/column coordinates ``start, start + 1, ...`` of every cell, each of shape (H, W)."""
    rows = torch.linspace(start, height - 1 + start, height, dtype=torch.float32, device=device)
    cols = torch.linspace(start, width - 1 + start, width, dtype=torch.float32, device=device)
    return torch.meshgrid(rows, cols, indexing="ij")


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Reference point of every encoder token, expressed for every level.

    The centre of each cell is normalised by the valid extent of its own level, then mapped
    into the padded coordinates of each level (deformable attention samples padded maps).

    Args:
        spatial_shapes: ``(h, w)`` of each of the L levels.
        valid_ratios: Shape (B, L, 2), see :func:`level_valid_ratios`.

    Returns:
        Tensor of shape (B, S, L, 2) with ``S = sum(h * w)``, last dim ``(x, y)``.
    """
    per_level = []
    for lvl, (height, width) in enumerate(spatial_shapes):
        ys, xs = _cell_grid(height, width, 0.5, valid_ratios.device)
        ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * height)
        xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * width)
        per_level.append(torch.stack((xs, ys), -1))
    points = torch.cat(per_level, 1)
    return points[:, :, None] * valid_ratios[:, None]


def encoder_proposals(padding_mask: Tensor, spatial_shapes: list[tuple[int, int]]) -> Tensor:
    """One square anchor box per encoder token (two-stage query selection).

    The box is centred on the cell, normalised by the valid extent of the level, and its size
    grows by 2x per level starting at :data:`BASE_PROPOSAL_SIZE`.

    Args:
        padding_mask: Flattened padding mask of all levels, shape (B, S).
        spatial_shapes: ``(h, w)`` of each level.

    Returns:
        Tensor of shape (B, S, 4), normalised ``(cx, cy, w, h)``; padded cells get values
        outside ``[0, 1]`` and must be discarded by the caller using ``padding_mask``.
    """
    batch = padding_mask.shape[0]
    boxes, start = [], 0
    for lvl, (height, width) in enumerate(spatial_shapes):
        mask = padding_mask[:, start : start + height * width].view(batch, height, width)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys, xs = _cell_grid(height, width, 0.0, padding_mask.device)
        centers = torch.stack([xs, ys], -1)
        extent = torch.stack([valid_w, valid_h], -1).view(batch, 1, 1, 2)
        centers = (centers[None].expand(batch, -1, -1, -1) + 0.5) / extent
        sizes = torch.ones_like(centers) * BASE_PROPOSAL_SIZE * (2.0**lvl)
        boxes.append(torch.cat((centers, sizes), -1).view(batch, -1, 4))
        start += height * width
    return torch.cat(boxes, 1)


def _axis_sine(values: Tensor, dim_t: Tensor) -> Tensor:
    """Interleaved sin/cos embedding of one coordinate: (B, N) -> (B, N, len(dim_t))."""
    phases = (values * (2 * math.pi))[:, :, None] / dim_t
    return torch.stack((phases[:, :, 0::2].sin(), phases[:, :, 1::2].cos()), dim=3).flatten(2)


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: int = 10000) -> Tensor:
    """Sine embedding of normalised points or boxes (DAB/DINO style).

    Args:
        boxes: Shape (B, N, 2) ``(x, y)`` or (B, N, 4) ``(cx, cy, w, h)``, values in [0, 1].
        num_feats: Embedding size per coordinate (half the transformer width).
        temperature: Frequency base.

    Returns:
        Shape (B, N, num_feats * D) with the coordinates ordered ``y, x[, w, h]``.
    """
    if boxes.size(-1) not in (2, 4):
        raise ValueError(f"expected 2 or 4 coordinates per box, got {boxes.size(-1)}")
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    order = (1, 0) if boxes.size(-1) == 2 else (1, 0, 2, 3)
    return torch.cat([_axis_sine(boxes[:, :, i], dim_t) for i in order], dim=2)
