"""The response schema ``codetr-serve/detections/v1``: model outputs -> a JSON-ready dict.

The shape is described in ``docs/schema.md`` and machine-checkable with ``docs/detections.v1.json`` (the
tests validate replies with ``jsonschema``). Versioning: adding fields keeps ``v1``
(clients must ignore fields they do not know); renaming, removing or changing the meaning of a field bumps
the version in ``SCHEMA_ID``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SCHEMA_ID", "ModelInfo", "build_response", "label_name"]

SCHEMA_ID = "codetr-serve/detections/v1"

# Two decimals of a pixel is far below annotation noise; four decimals of a score keep ordering meaningful
# while keeping responses short (hundreds of detections per image are common at low thresholds).
_BOX_DECIMALS = 2
_SCORE_DECIMALS = 4
_TIMING_DECIMALS = 2


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: a name and a version string (e.g. a checkpoint tag)."""

    name: str
    version: str


def label_name(label_id: int, class_names: Sequence[str]) -> str:
    """The class name for ``label_id``, or ``class_<id>`` when the id is outside ``class_names``."""
    if 0 <= label_id < len(class_names):
        return str(class_names[label_id])
    return f"class_{label_id}"


def _as_arrays(boxes: Any, scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coerce and check shapes; a mismatch is a server bug, so it raises ValueError (-> 500 upstream)."""
    boxes_arr = np.asarray(boxes, dtype=np.float64)
    if boxes_arr.size == 0:  # "no detections" may arrive as shape (0,) rather than (0, 4)
        boxes_arr = boxes_arr.reshape(0, 4)
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_arr = np.asarray(labels).reshape(-1).astype(np.int64)
    if boxes_arr.ndim != 2 or boxes_arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes_arr.shape}")
    if not len(boxes_arr) == len(scores_arr) == len(labels_arr):
        raise ValueError(
            f"boxes, scores and labels disagree on N: {len(boxes_arr)}, {len(scores_arr)}, {len(labels_arr)}"
        )
    return boxes_arr, scores_arr, labels_arr


def _select(scores: np.ndarray, score_threshold: float, max_detections: int) -> np.ndarray:
    """Indices of detections with score >= threshold, best first (stable on ties), at most max_detections."""
    kept = np.flatnonzero(scores >= score_threshold)  # NaN scores compare False and drop out
    order = np.argsort(-scores[kept], kind="stable")
    return kept[order][:max_detections]


def _clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip xyxy boxes to [0, width] x [0, height] (continuous pixel coordinates, as mmdet uses)."""
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, float(width))
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, float(height))
    return clipped


def _detection(box: np.ndarray, score: float, label_id: int, class_names: Sequence[str]) -> dict[str, Any]:
    x1, y1, x2, y2 = (round(float(value), _BOX_DECIMALS) for value in box)
    return {
        "label": label_name(label_id, class_names),
        "label_id": int(label_id),
        "score": round(float(score), _SCORE_DECIMALS),
        "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
    }


def build_response(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    image_size: tuple[int, int],
    score_threshold: float,
    max_detections: int,
    model: ModelInfo,
    timings_ms: Mapping[str, float],
) -> dict[str, Any]:
    """Build the v1 response for one image.

    ``boxes`` are ``(N, 4)`` xyxy in original-image pixels, ``scores`` ``(N,)``, ``labels`` ``(N,)`` class
    indices; ``image_size`` is ``(height, width)`` of the decoded image. Detections scoring at least
    ``score_threshold`` are kept, sorted by score (descending), cut to ``max_detections`` and clipped to
    the image. Degenerate boxes left by clipping are kept: the model's own post-processing does the same.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be within [0, 1], got {score_threshold}")
    if max_detections < 0:
        raise ValueError(f"max_detections must be >= 0, got {max_detections}")
    height, width = (int(side) for side in image_size)
    boxes_arr, scores_arr, labels_arr = _as_arrays(boxes, scores, labels)
    chosen = _select(scores_arr, score_threshold, max_detections)
    clipped = _clip_boxes(boxes_arr[chosen], height, width)
    return {
        "schema": SCHEMA_ID,
        "model": {"name": model.name, "version": model.version},
        "image": {"width": width, "height": height},
        "detections": [
            _detection(box, score, label_id, class_names)
            for box, score, label_id in zip(clipped, scores_arr[chosen], labels_arr[chosen], strict=True)
        ],
        "timings_ms": {str(name): round(float(ms), _TIMING_DECIMALS) for name, ms in timings_ms.items()},
    }
