"""The custom metrics one batch produces, as plain data (the handler turns them into TorchServe calls).

Names, units and types here must match config/metrics.yaml: TorchServe's Prometheus mode drops metrics that
the yaml does not declare (tests/integration/test_handler.py keeps the two in step).

Latencies and batch sizes are Prometheus histograms that we build from counters. TorchServe 0.12 does have
a histogram type, but its buckets are the Java client's fixed defaults (0.005 .. 10 in the metric's own
unit; metrics.yaml has no field for buckets): no single unit fits both a 3 ms decode and a 5 minute CPU
forward. So each histogram ``X`` is three counters, ``X_bucket{le=...}`` (cumulative, as Prometheus
defines it), ``X_sum`` and ``X_count``, which PromQL's ``histogram_quantile`` reads like any histogram.
docs/metrics.md explains the choice and lists the queries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import psutil

from codetr_serve.ops.msda import serving_path
from codetr_serve.runtime.batch import BatchStats

MetricKind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class MetricPoint:
    name: str
    value: float
    unit: str
    kind: MetricKind
    dimensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Histogram:
    """A histogram family: upper bounds (ascending, +Inf implied) in ``unit``, one observation per batch."""

    name: str
    unit: str
    bounds: tuple[float, ...]

    def observe(self, value: float) -> list[MetricPoint]:
        """The counter increments for one observation: every bucket at or above it, the sum and the count.

        Largest bucket first: TorchServe applies the lines one by one while it may be scraped, and updating
        from the top keeps the buckets cumulative at every moment in between.
        """
        points = [MetricPoint(f"{self.name}_count", 1.0, "count", "counter"),
                  MetricPoint(f"{self.name}_bucket", 1.0, "count", "counter", (("le", "+Inf"),))]
        points += [MetricPoint(f"{self.name}_bucket", float(value <= bound), "count", "counter",
                               (("le", _le_label(bound)),)) for bound in reversed(self.bounds)]
        points.append(MetricPoint(f"{self.name}_sum", float(value), self.unit, "counter"))
        return points


def _le_label(bound: float) -> str:
    # The same spelling Prometheus client libraries use ("0.025", "1.0"), so le values look familiar.
    return repr(float(bound))


# Decode + resize of a batch, and detections -> JSON: a few ms per image, seconds for a large batch.
FAST_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# One batched forward: ~30 ms (GPU, FP16) to several minutes (Swin-L on CPU: 254 s per image here).
FORWARD_SECONDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A worker's wait between batches: a few ms of front-end turnaround under load, seconds to hours when idle.
WAIT_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0, 60.0)
BATCH_SIZES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)

PREPROCESS = Histogram("CoDetrPreprocessSeconds", "s", FAST_SECONDS)
FORWARD = Histogram("CoDetrForwardSeconds", "s", FORWARD_SECONDS)
POSTPROCESS = Histogram("CoDetrPostprocessSeconds", "s", FAST_SECONDS)
BATCH_SIZE = Histogram("CoDetrBatchSize", "count", BATCH_SIZES)
WAIT = Histogram("CoDetrWorkerWaitSeconds", "s", WAIT_SECONDS)
HISTOGRAMS = (PREPROCESS, FORWARD, POSTPROCESS, BATCH_SIZE, WAIT)

# name -> (unit, kind, extra dimension names) of the plain counters and gauges.
SCALARS: dict[str, tuple[str, MetricKind, tuple[str, ...]]] = {
    "CoDetrBatches": ("count", "counter", ()),
    "CoDetrImages": ("count", "counter", ()),
    "CoDetrDetections": ("count", "counter", ()),
    "CoDetrRejectedInputs": ("count", "counter", ("Reason",)),
    "CoDetrConfiguredBatchSize": ("count", "gauge", ()),
    "CoDetrWorkerMemoryBytes": ("B", "gauge", ("WorkerPid",)),
    # 1 for the deformable-attention code this worker runs: Path op | fallback | mmcv_cuda, Requested = the
    # cpu_msda setting. Path="fallback" with Requested="auto" means the compiled op failed to load.
    "CoDetrDeformableAttentionPath": ("count", "gauge", ("Path", "Requested")),
}


#: What each metric family measures (docs/reference.md lists them; tests/unit/test_reference.py wants one
#: for every family above).
MEANING: dict[str, str] = {
    "CoDetrPreprocessSeconds": "one batch's parsing, decoding and resizing",
    "CoDetrForwardSeconds": "one batch's forward(s) on the model's device",
    "CoDetrPostprocessSeconds": "one batch's detections -> JSON",
    "CoDetrBatchSize": "images in one batch's forward",
    "CoDetrWorkerWaitSeconds": "a worker's wait from one batch's replies to the next batch's arrival (under "
                               "load: TorchServe's turnaround; a large share of the wall time at full queues "
                               "means the front end, not the model, is the limit)",
    "CoDetrBatches": "batches with at least one image (= CoDetrBatchSize_count)",
    "CoDetrImages": "images through the model (= CoDetrBatchSize_sum)",
    "CoDetrDetections": "detections returned; divide by CoDetrImages for the mean per image",
    "CoDetrRejectedInputs": "inputs refused before the forward (bad input, model not ready), by the error "
                            "code of the reply",
    "CoDetrConfiguredBatchSize": "batchSize from model-config.yaml, to compare the mean batch with",
    "CoDetrWorkerMemoryBytes": "each worker's resident memory after its last batch",
    "CoDetrDeformableAttentionPath": "1 for the deformable-attention code the worker runs: Path op (compiled "
                                     "CPU op), fallback (mmcv's pure-PyTorch code) or mmcv_cuda; Requested "
                                     "is the cpu_msda setting. Alert on Path=fallback with Requested=auto",
}


def declared() -> dict[str, tuple[str, MetricKind, tuple[str, ...]]]:
    """Every metric this module can emit: name -> (unit, kind, extra dimension names)."""
    names = dict(SCALARS)
    for histogram in HISTOGRAMS:
        names[f"{histogram.name}_bucket"] = ("count", "counter", ("le",))
        names[f"{histogram.name}_sum"] = (histogram.unit, "counter", ())
        names[f"{histogram.name}_count"] = ("count", "counter", ())
    return names


def _point(name: str, value: float, **dims: str) -> MetricPoint:
    unit, kind, _ = SCALARS[name]
    return MetricPoint(name, float(value), unit, kind, tuple(dims.items()))


def batch_metrics(stats: BatchStats, configured_batch_size: int) -> list[MetricPoint]:
    """Points for one batch: stage times and batch size as histograms, counts, rejects by error code."""
    points = [*PREPROCESS.observe(stats.preprocess_ms / 1000.0),
              *POSTPROCESS.observe(stats.postprocess_ms / 1000.0),
              _point("CoDetrConfiguredBatchSize", configured_batch_size)]
    if stats.wait_ms is not None:
        points += WAIT.observe(stats.wait_ms / 1000.0)
    if stats.batch_size:
        points += [*FORWARD.observe(stats.inference_ms / 1000.0), *BATCH_SIZE.observe(stats.batch_size),
                   _point("CoDetrBatches", 1), _point("CoDetrImages", stats.batch_size),
                   _point("CoDetrDetections", sum(stats.detections_per_image))]
    points += [_point("CoDetrRejectedInputs", count, Reason=reason)
               for reason, count in sorted(stats.rejected.items())]
    return points


def worker_metrics() -> list[MetricPoint]:
    """This worker's resident memory (TorchServe 0.12 exports only the host's in Prometheus mode) and the
    deformable-attention path its model runs."""
    pid = os.getpid()
    points = [_point("CoDetrWorkerMemoryBytes", psutil.Process(pid).memory_info().rss, WorkerPid=str(pid))]
    attention = serving_path()
    if attention is not None:
        points.append(_point("CoDetrDeformableAttentionPath", 1, Path=attention.path,
                             Requested=attention.requested))
    return points
