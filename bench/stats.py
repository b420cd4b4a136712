"""Pure numbers: percentiles, latency summaries and the three headline ratios. No I/O here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks; NaN when empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


@dataclass(frozen=True)
class LatencySummary:
    """What one load phase produced, from the client's side."""

    requests: int
    errors: int
    duration_s: float
    throughput: float  # successful requests per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float


def summarize(latencies_ms: Sequence[float], errors: int, duration_s: float) -> LatencySummary:
    """Summary of successful-request latencies; throughput counts successes only."""
    ok = len(latencies_ms)
    mean = sum(latencies_ms) / ok if ok else math.nan
    return LatencySummary(
        requests=ok + errors, errors=errors, duration_s=duration_s,
        throughput=ok / duration_s if duration_s > 0 else math.nan,
        p50_ms=percentile(latencies_ms, 50), p95_ms=percentile(latencies_ms, 95),
        p99_ms=percentile(latencies_ms, 99), mean_ms=mean)


# Two-sided 95 % critical values of Student's t by degrees of freedom (1-10); 2.0 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % confidence interval of the mean of `values` (Student's t); NaNs are dropped, <2 values: NaN."""
    kept = [v for v in values if not math.isnan(v)]
    if len(kept) < 2:
        return math.nan, math.nan
    mean = sum(kept) / len(kept)
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
    t = _T95[len(kept) - 2] if len(kept) - 1 <= len(_T95) else 2.0
    half = t * sd / math.sqrt(len(kept))
    return mean - half, mean + half


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either side is missing or the denominator is not positive."""
    if any(math.isnan(v) for v in (numerator, denominator)) or denominator <= 0:
        return math.nan
    return numerator / denominator


@dataclass(frozen=True)
class Verdict:
    """One headline ratio against its target."""

    name: str
    value: float
    target: str  # e.g. ">= 0.95"
    met: bool | None  # None: no target, or not measured
    spread: tuple[float, float] | None = None  # lowest and highest per-round value, when measured in rounds
    interval: tuple[float, float] | None = None  # 95 % confidence interval of the per-round mean


def check(name: str, value: float, target: str | None, rounds: Sequence[float] = ()) -> Verdict:
    """Compare `value` with a target written as '>= x' or '<= x'; `rounds`: its per-round values, if any."""
    kept = [v for v in rounds if not math.isnan(v)]
    spread = (min(kept), max(kept)) if kept else None
    interval = mean_interval(kept) if len(kept) >= 2 else None
    if target is None or math.isnan(value):
        return Verdict(name, value, target or "-", None, spread, interval)
    op, bound = target.split()
    limit = float(bound)
    met = value >= limit if op == ">=" else value <= limit
    return Verdict(name, value, target, met, spread, interval)
