"""The custom metrics one batch produces, as plain data.

Names, units and types here must match config/metrics.yaml: TorchServe's Prometheus mode drops metrics that
the yaml does not declare (a test keeps the two in step). The handler turns these points into TorchServe
metric calls; the core stays free of TorchServe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from codetr_serve.runtime.core import BatchStats

MetricKind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class MetricPoint:
    name: str
    value: float
    unit: str
    kind: MetricKind
    dimensions: tuple[tuple[str, str], ...] = ()


# name -> (unit, kind, extra dimension names); the handler appends TorchServe's ModelName and Level.
DECLARED: dict[str, tuple[str, MetricKind, tuple[str, ...]]] = {
    "CoDetrPreprocessMs": ("ms", "gauge", ()),
    "CoDetrInferenceMs": ("ms", "gauge", ()),
    "CoDetrPostprocessMs": ("ms", "gauge", ()),
    "CoDetrBatchSize": ("count", "gauge", ()),
    "CoDetrBatches": ("count", "counter", ()),
    "CoDetrImages": ("count", "counter", ()),
    "CoDetrDetectionsPerImage": ("count", "gauge", ()),
    "CoDetrRejectedInputs": ("count", "counter", ("Reason",)),
}


def _point(name: str, value: float, **dims: str) -> MetricPoint:
    unit, kind, _ = DECLARED[name]
    return MetricPoint(name, float(value), unit, kind, tuple(dims.items()))


def batch_metrics(stats: BatchStats) -> list[MetricPoint]:
    """Points for one batch: stage times, how many images went through the model, rejects by reason."""
    points = [
        _point("CoDetrPreprocessMs", stats.preprocess_ms),
        _point("CoDetrPostprocessMs", stats.postprocess_ms),
    ]
    if stats.batch_size:
        points += [
            _point("CoDetrInferenceMs", stats.inference_ms),
            _point("CoDetrBatchSize", stats.batch_size),
            _point("CoDetrBatches", 1),
            _point("CoDetrImages", stats.batch_size),
        ]
    if stats.detections_per_image:
        mean = sum(stats.detections_per_image) / len(stats.detections_per_image)
        points.append(_point("CoDetrDetectionsPerImage", mean))
    points += [_point("CoDetrRejectedInputs", count, Reason=reason)
               for reason, count in sorted(stats.rejected.items())]
    return points
