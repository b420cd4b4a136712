"""Turning one image's query-head outputs into detections (top-k, box scaling, (soft-)NMS)."""

from __future__ import annotations

import torch.nn.functional as F
from mmcv.ops import batched_nms
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.structures import InstanceData
from torch import Tensor


def top_query_class_pairs(
    cls_score: Tensor, count: int, num_classes: int, use_sigmoid: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Best ``count`` detections of one image as ``(scores, labels, query_index)``, each (K,).

    Args:
        cls_score: Class logits, shape (Q, num_classes) for sigmoid scoring, or
            (Q, num_classes + 1) with a trailing background column for softmax scoring.
        count: Wanted number of detections (capped at what the logits can provide).
        num_classes: Number of object classes.
        use_sigmoid: Score each (query, class) pair independently.
    """
    if use_sigmoid:
        # Every (query, class) pair competes, so one query may yield several labels.
        flat = cls_score.sigmoid().view(-1)
        scores, flat_index = flat.topk(min(count, flat.numel()))
        return scores, flat_index % num_classes, flat_index // num_classes
    scores, labels = F.softmax(cls_score, dim=-1)[..., :-1].max(-1)
    scores, query_index = scores.topk(min(count, scores.numel()))
    return scores, labels[query_index], query_index


def to_image_boxes(boxes: Tensor, img_meta: dict, rescale: bool) -> Tensor:
    """Normalised cxcywh boxes (N, 4) -> xyxy pixels (N, 4).

    Boxes are scaled to ``img_shape`` (the resized image without padding) and clipped to it;
    with ``rescale`` they are then divided by ``scale_factor`` (w, h) to reach the original image.
    """
    height, width = img_meta["img_shape"][:2]
    xyxy = bbox_cxcywh_to_xyxy(boxes)
    xyxy[:, 0::2] = (xyxy[:, 0::2] * width).clamp(min=0, max=width)
    xyxy[:, 1::2] = (xyxy[:, 1::2] * height).clamp(min=0, max=height)
    if rescale:
        if img_meta.get("scale_factor") is None:
            raise KeyError("rescale=True needs scale_factor in the image metainfo")
        xyxy /= xyxy.new_tensor(img_meta["scale_factor"]).repeat((1, 2))
    return xyxy


def class_aware_nms(results: InstanceData, nms_cfg: dict, max_per_img: int) -> InstanceData:
    """mmcv ``batched_nms`` per label (e.g. ``dict(type='soft_nms', iou_threshold=0.8)``).

    Returns the kept detections sorted by their (possibly decayed) score, at most
    ``max_per_img``; soft-NMS drops those whose decayed score falls under its ``min_score``.
    """
    if results.bboxes.numel() == 0:
        return results
    dets, keep = batched_nms(results.bboxes, results.scores, results.labels, dict(nms_cfg))
    results = results[keep]
    results.scores = dets[:, -1]  # soft-NMS decays scores; plain NMS leaves them unchanged
    return results[:max_per_img]
