"""The query head's post-processing with fixed output shapes: top-k pairs, boxes in image pixels, soft-NMS.

The PyTorch path (``codetr_serve.models.query_postprocess``) returns a different number of detections per
image and runs soft-NMS in mmcv's C++ loop, neither of which an ONNX graph can hold as is. Here every image
gets ``K`` rows in the order mmcv's soft-NMS selects them, plus ``num_detections``; rows past it are
padding (score 0, label -1, box 0).

Soft-NMS is mmcv 2.1.0's ``softnms_cpu`` (``batched_nms`` per label) written as ``K`` unrolled steps over
the whole batch: each step takes the best remaining score (ties: lowest index; mmcv's loop breaks ties by a
position its swaps have changed, so exactly tied scores may come out in another order), decays the others by
the overlap (``linear``: ``1 - iou`` where ``iou >= iou_threshold``; ``gaussian``: ``exp(-iou^2 / sigma)``;
``naive``: 0 where ``iou >= iou_threshold``) and drops those under ``min_score``. The class-aware offset
(boxes shifted by ``label * (max coordinate + 1)``) is mmcv's, so the overlaps are the same floats.
"""

from __future__ import annotations

import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import Tensor

SOFT_NMS_DEFAULTS = dict(iou_threshold=0.3, sigma=0.5, min_score=1e-3, method="linear")


def top_pairs(cls_logits: Tensor, count: int, num_classes: int, use_sigmoid: bool) -> tuple[Tensor, ...]:
    """Best ``count`` (query, class) pairs per image: ``(scores, labels, query_index)``, each (B, count)."""
    if use_sigmoid:
        scores, flat_index = cls_logits.sigmoid().flatten(1).topk(count, dim=1)
        return scores, flat_index % num_classes, flat_index // num_classes
    scores, labels = cls_logits.softmax(-1)[..., :-1].max(-1)
    scores, query_index = scores.topk(count, dim=1)
    return scores, labels.gather(1, query_index), query_index


def image_boxes(boxes: Tensor, img_shapes: Tensor, scale_factors: Tensor) -> Tensor:
    """Normalised cxcywh (B, K, 4) -> xyxy pixels of the original image, clipped to ``img_shape``.

    ``img_shapes`` is (B, 2) ``(h, w)`` of the resized image without padding; ``scale_factors`` (B, 2)
    ``(w, h)``: the same arithmetic as ``query_postprocess.to_image_boxes`` with ``rescale=True``.
    """
    sizes = img_shapes.to(boxes.dtype).flip(-1)[:, None, :]  # (B, 1, 2) as (w, h)
    xyxy = bbox_cxcywh_to_xyxy(boxes)
    x = torch.minimum((xyxy[..., 0::2] * sizes[..., :1]).clamp(min=0), sizes[..., :1])
    y = torch.minimum((xyxy[..., 1::2] * sizes[..., 1:]).clamp(min=0), sizes[..., 1:])
    xyxy = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)
    return xyxy / scale_factors.to(boxes.dtype).repeat(1, 2)[:, None, :]


def _decay(iou: Tensor, method: str, iou_threshold: float, sigma: float) -> Tensor:
    if method == "linear":
        return torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    if method == "naive":
        return torch.where(iou >= iou_threshold, torch.zeros_like(iou), torch.ones_like(iou))
    raise ValueError(f"soft_nms method must be linear, gaussian or naive, got {method!r}")


def soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, alive: Tensor,
             nms_cfg: dict) -> tuple[Tensor, ...]:
    """Class-aware soft-NMS of (B, K) candidates in K fixed steps.

    Returns ``(order (B, K) index into the candidates, scores (B, K) decayed, selected (B, K) bool)`` in
    selection order; ``selected`` is False once an image has no candidate left.
    """
    cfg = {**SOFT_NMS_DEFAULTS, **{k: v for k, v in nms_cfg.items() if k != "type"}}
    if cfg.pop("offset", 0) != 0 or cfg.pop("class_agnostic", False):
        raise NotImplementedError("ONNX soft-NMS supports offset=0 and class-aware NMS only")
    lowest = torch.finfo(boxes.dtype).min
    top = torch.where(alive[..., None], boxes, torch.full_like(boxes, lowest)).amax(dim=(1, 2), keepdim=True)
    shifted = boxes + (labels.to(boxes.dtype)[..., None] * (top + 1))
    x1, y1, x2, y2 = shifted.unbind(-1)
    areas = (x2 - x1) * (y2 - y1)
    positions = torch.arange(boxes.shape[1], device=boxes.device)[None].expand_as(alive)
    decay = (cfg["method"], cfg["iou_threshold"], cfg["sigma"], cfg["min_score"])

    def step(carry: tuple, _: Tensor) -> tuple:
        return _soft_nms_step(carry, decay)

    # One scan (ONNX Scan) instead of K unrolled steps: the graph stays small and exports in seconds.
    from torch._higher_order_ops.scan import scan

    steps = torch.zeros(boxes.shape[1], dtype=boxes.dtype, device=boxes.device)
    init = tuple(t.contiguous() for t in (scores, alive, x1, y1, x2, y2, areas, positions))
    _, (order, kept, selected) = scan(step, init, steps)
    return order.squeeze(-1).T, kept.squeeze(-1).T, selected.squeeze(-1).T


def _soft_nms_step(carry: tuple, decay: tuple) -> tuple:
    """One selection: the best remaining candidate of every image, then decay and drop the others."""
    scores, alive, x1, y1, x2, y2, areas, positions = carry
    method, iou_threshold, sigma, min_score = decay
    pick = torch.where(alive, scores, torch.full_like(scores, -1.0)).argmax(1, keepdim=True)
    any_left = alive.any(1, keepdim=True)
    px1, py1, px2, py2, parea = (t.gather(1, pick) for t in (x1, y1, x2, y2, areas))
    width = (torch.minimum(px2, x2) - torch.maximum(px1, x1)).clamp(min=0)
    height = (torch.minimum(py2, y2) - torch.maximum(py1, y1)).clamp(min=0)
    inter = width * height
    iou = inter / (parea + areas - inter)
    kept = scores.gather(1, pick)
    alive = alive & (positions != pick)
    scores = torch.where(alive, scores * _decay(iou, method, iou_threshold, sigma), scores)
    alive = alive & (scores >= min_score)
    constants = tuple(t.clone() for t in (x1, y1, x2, y2, areas, positions))
    return (scores, alive, *constants), (pick, kept, any_left)


def detections(cls_logits: Tensor, boxes: Tensor, img_shapes: Tensor, scale_factors: Tensor,
               num_classes: int, use_sigmoid: bool, test_cfg: dict, num_queries: int) -> tuple[Tensor, ...]:
    """``(boxes (B, K, 4), scores (B, K), labels (B, K), num_detections (B,))`` of the last decoder layer.

    K is computed from the configured ``num_queries`` rather than ``cls_logits.shape[1]`` (which is
    ``min(num_queries, tokens)`` and symbolic under export), so the graph's outputs have a static K.
    """
    pairs = num_queries * num_classes if use_sigmoid else num_queries
    count = min(int(test_cfg.get("max_per_img", pairs)), pairs)
    scores, labels, query_index = top_pairs(cls_logits, count, num_classes, use_sigmoid)
    picked = boxes.gather(1, query_index[..., None].expand(-1, -1, 4))
    pixels = image_boxes(picked, img_shapes, scale_factors)
    alive = scores > test_cfg.get("score_thr", 0) if test_cfg.get("score_thr", 0) > 0 \
        else torch.ones_like(scores, dtype=torch.bool)
    nms_cfg = test_cfg.get("nms")
    if not nms_cfg:
        return _pad(pixels, scores, labels, alive)
    if nms_cfg.get("type", "nms") != "soft_nms":
        raise NotImplementedError(f"ONNX export implements soft_nms only, the config asks for {nms_cfg}")
    order, kept, selected = soft_nms(pixels, scores, labels, alive, dict(nms_cfg))
    return _pad(pixels.gather(1, order[..., None].expand(-1, -1, 4)), kept, labels.gather(1, order), selected)


def _pad(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, ...]:
    """Zero the rows that are not detections; valid rows are always first (selection order)."""
    boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return boxes, scores, labels, valid.sum(1)
