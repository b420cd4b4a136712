"""Read TorchServe's metrics: Prometheus text (/metrics) and the `[METRICS]` lines of model_metrics.log."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

# Prometheus exposition line: name{labels} value  (labels optional)
_PROM_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
# model_metrics.log: ... [METRICS]CoDetrBatchSize.count:4.0|#ModelName:co_detr,Level:Model|#hostname:...
_LOG_METRIC = re.compile(r"\[METRICS\](?P<name>[A-Za-z0-9_]+)\.(?P<unit>[A-Za-z]+):(?P<value>[-0-9.eE+]+)\|")


def prometheus_values(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of every sample of metric `name` whose labels include `labels`; 0.0 when absent."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _PROM_LINE.match(line.strip())
        if not match or match["name"] != name:
            continue
        if labels and not _labels_match(match["labels"] or "", labels):
            continue
        total += float(match["value"])
    return total


def _labels_match(raw: str, wanted: Mapping[str, str]) -> bool:
    found = dict(re.findall(r'(\w+)="([^"]*)"', raw))
    return all(found.get(key) == value for key, value in wanted.items())


def log_metric_values(lines: Iterable[str], name: str, model: str | None = None) -> list[float]:
    """Values of `[METRICS]<name>` lines (of one model's workers, if given), in order, each point once.

    With metrics_mode=log they are in model_metrics.log; in Prometheus mode TorchServe 0.12 echoes them
    (twice per point) in ts_log.log. A point ends with its request ids, so identical text is one point.
    """
    values, seen = [], set()
    for line in lines:
        match = _LOG_METRIC.search(line)
        if not match or match["name"] != name:
            continue
        if model is not None and f"ModelName:{model}," not in line:
            continue
        point = line[match.start():].split(", pattern=")[0].strip()
        if point not in seen:
            seen.add(point)
            values.append(float(match["value"]))
    return values


def batch_histogram(batch_sizes: Iterable[float]) -> dict[int, int]:
    """{batch size: number of forwards}, sorted by size."""
    counts = Counter(int(round(size)) for size in batch_sizes)
    return dict(sorted(counts.items()))


def mean_batch(images: float, batches: float) -> float:
    """CoDetrImages / CoDetrBatches deltas; NaN when no forward ran."""
    return images / batches if batches > 0 else float("nan")


def format_histogram(histogram: Mapping[int, int]) -> str:
    """'1x3 4x10' : size x count, compact for a table cell."""
    return " ".join(f"{size}x{count}" for size, count in sorted(histogram.items())) or "-"
