"""The metrics part of docs/reference.md: every metric config/metrics.yaml lets TorchServe export.

Ours come from :mod:`codetr_serve.runtime.metrics` (names, kinds, units, buckets, meanings); their labels from
config/metrics.yaml, which TorchServe reads. TorchServe's own metrics are those the yaml declares beyond
ours; what they measure is TorchServe's definition (its metrics documentation and 0.12 sources), kept below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from codetr_serve.runtime import metrics
from codetr_serve.runtime.batch import BatchStats
from codetr_serve.tools.markdown_table import table

METRICS_YAML = Path(__file__).resolve().parents[2] / "config" / "metrics.yaml"

#: TorchServe's metrics that config/metrics.yaml declares: what each measures.
TORCHSERVE_MEANING = {
    "Requests2XX": "responses with a 2xx status, every API on the host (pings included)",
    "Requests4XX": "responses with a 4xx status, every API on the host",
    "Requests5XX": "responses with a 5xx status, every API on the host",
    "ts_inference_requests_total": "inference requests received",
    "ts_inference_latency_microseconds": "sum of the requests' time in TorchServe, arrival to reply",
    "ts_queue_latency_microseconds": "sum of the requests' time queued until a worker took them into a "
                                     "batch (the maxBatchDelay wait included)",
    "QueueTime": "the last request's queue time",
    "WorkerThreadTime": "the last batch's time in the frontend's worker thread, the Python worker's "
                        "time excluded",
    "WorkerLoadTime": "the time a worker took to start and load the model",
    "CPUUtilization": "the host's CPU use (psutil: the node's, not the container's)",
    "MemoryUsed": "the host's used memory (the node's, not the container's)",
    "MemoryUtilization": "the host's memory use (the node's, not the container's)",
    "GPUMemoryUsed": "per GPU; collected only where TorchServe finds GPUs and the nvgpu package",
    "GPUUtilization": "per GPU; collected only where TorchServe finds GPUs and the nvgpu package",
    "GPUMemoryUtilization": "per GPU; collected only where TorchServe finds GPUs and the nvgpu package",
    "HandlerTime": "the last batch's time in the handler (preprocess + inference + postprocess)",
    "PredictionTime": "the last batch's time in the Python worker's predict call (the handler and "
                      "the reply's assembly)",
}
#: TorchServe adds this label to every model metric (config/metrics.yaml does not list it there).
BACKEND_LABEL = "Hostname"


def declarations() -> dict[str, dict[str, Any]]:
    """name -> {"section", "kind", "unit", "labels"} for every metric config/metrics.yaml declares."""
    config = yaml.safe_load(METRICS_YAML.read_text(encoding="utf-8"))
    found: dict[str, dict[str, Any]] = {}
    for section in ("ts_metrics", "model_metrics"):
        for kind, entries in config[section].items():
            for entry in entries:
                labels = list(entry.get("dimensions", []))
                if section == "model_metrics":
                    labels.append(BACKEND_LABEL)
                found[entry["name"]] = {"section": section, "kind": kind, "unit": entry["unit"],
                                        "labels": labels}
    return found


def _labels(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _declared(name: str, yaml_names: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if name not in yaml_names:
        raise SystemExit(f"{name} is emitted but config/metrics.yaml does not declare it: TorchServe "
                         "would drop it")
    return yaml_names[name]


def ours(yaml_names: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for family in metrics.HISTOGRAMS:
        labels = _declared(f"{family.name}_bucket", yaml_names)["labels"]
        bounds = ", ".join(f"{bound:g}" for bound in family.bounds)
        rows.append([f"`{family.name}`", "histogram", family.unit, _labels(labels),
                     f"{metrics.MEANING[family.name]}; buckets {bounds}, +Inf"])
    for name, (unit, kind, _) in metrics.SCALARS.items():
        rows.append([f"`{name}`", kind, unit, _labels(_declared(name, yaml_names)["labels"]),
                     metrics.MEANING[name]])
    return rows


def torchserve_own(yaml_names: dict[str, dict[str, Any]]) -> list[list[Any]]:
    emitted = set(metrics.declared())
    rows = []
    for name, entry in yaml_names.items():
        if name in emitted:
            continue
        if name not in TORCHSERVE_MEANING:
            raise SystemExit(f"config/metrics.yaml declares {name}: say what it measures in "
                             "codetr_serve/tools/reference_metrics.py TORCHSERVE_MEANING")
        rows.append([f"`{name}`", entry["kind"], entry["unit"], _labels(entry["labels"]),
                     TORCHSERVE_MEANING[name]])
    return rows


def points_per_batch() -> int:
    """Metric points the handler emits for a batch that ran a forward and refused nothing.

    Counted as in a serving worker, whose loaded model always reports its deformable-attention path; the
    generator's own process may not have loaded one, and the page must not depend on that.
    """
    stats = BatchStats(batch_size=1, detections_per_image=[1])
    points = metrics.batch_metrics(stats, 1) + metrics.worker_metrics()
    reported = any(point.name == "CoDetrDeformableAttentionPath" for point in points)
    return len(points) + (0 if reported else 1)


def metrics_section() -> str:
    header = ["metric", "type", "unit", "labels", "what"]
    yaml_names = declarations()
    return "\n\n".join([
        "## Metrics",
        "Prometheus text on the metrics port (`/metrics`), exactly what "
        "[`config/metrics.yaml`](../config/metrics.yaml) declares. Queries, alerts and logs: "
        "[metrics.md](metrics.md).",
        "Ours, emitted by the handler once per batch (`codetr_serve/runtime/metrics.py`). Each histogram `X` "
        "is exposed as the counters `X_bucket{le}` (cumulative), `X_sum` and `X_count`; `histogram_quantile` "
        f"reads them like any histogram. A batch that ran a forward and refused nothing emits "
        f"{points_per_batch()} metric points, plus one per distinct error code it refused.",
        table(header, ours(yaml_names)),
        "TorchServe's own (units as TorchServe names them; the `ts_*` counters are sums over requests):",
        table(header, torchserve_own(yaml_names)),
    ])
