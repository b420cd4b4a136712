"""bench.stats: percentiles, summaries and the headline-ratio checks."""

from __future__ import annotations

import math

import pytest

from bench import stats


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert stats.percentile(values, 0) == 10.0
    assert stats.percentile(values, 100) == 40.0
    assert stats.percentile(values, 50) == pytest.approx(25.0)
    assert stats.percentile(values, 95) == pytest.approx(38.5)


def test_percentile_ignores_input_order_and_handles_edges() -> None:
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summarize_counts_successes_for_throughput() -> None:
    summary = stats.summarize([100.0] * 8, errors=2, duration_s=4.0)
    assert summary.requests == 10
    assert summary.errors == 2
    assert summary.throughput == pytest.approx(2.0)
    assert summary.p50_ms == summary.p99_ms == summary.mean_ms == 100.0


def test_summarize_with_nothing_measured() -> None:
    summary = stats.summarize([], errors=3, duration_s=1.0)
    assert summary.throughput == 0.0
    assert math.isnan(summary.p50_ms) and math.isnan(summary.mean_ms)


def test_ratio_guards_missing_and_zero_denominators() -> None:
    assert stats.ratio(9.5, 10.0) == pytest.approx(0.95)
    assert math.isnan(stats.ratio(1.0, 0.0))
    assert math.isnan(stats.ratio(math.nan, 2.0))


@pytest.mark.parametrize(("value", "target", "met"), [
    (0.96, ">= 0.95", True), (0.94, ">= 0.95", False), (1.05, "<= 1.05", True), (1.2, "<= 1.05", False)])
def test_check_against_targets(value: float, target: str, met: bool) -> None:
    assert stats.check("r", value, target).met is met


def test_check_without_target_or_value_has_no_verdict() -> None:
    assert stats.check("r", 1.3, None).met is None
    assert stats.check("r", math.nan, ">= 0.95").met is None


def test_mean_interval_uses_students_t() -> None:
    low, high = stats.mean_interval([1.0, 2.0, 3.0, float("nan")])  # mean 2, sd 1, n 3, t 4.303
    assert (low, high) == pytest.approx((2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5))
    assert all(math.isnan(v) for v in stats.mean_interval([1.0]))
