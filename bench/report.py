"""Turn measured rows into the three headline ratios, markdown tables and a CSV. Pure apart from `write_*`."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import stats

TABLE_COLUMNS = (
    ("config", "config", "{}"), ("handler", "handler", "{}"), ("mode", "load", "{}"),
    ("concurrency", "conc", "{}"), ("rate", "rate/s", "{:.2f}"), ("requests", "n", "{}"),
    ("errors", "err", "{}"), ("throughput", "img/s", "{:.2f}"), ("p50_ms", "p50 ms", "{:.0f}"),
    ("p95_ms", "p95 ms", "{:.0f}"), ("p99_ms", "p99 ms", "{:.0f}"), ("mean_batch", "mean batch", "{:.2f}"),
    ("batch_hist", "batches (size x n)", "{}"), ("forward_ms", "forward ms", "{:.0f}"),
    ("worker_cpu_pct", "worker CPU %", "{:.0f}"),
    ("frontend_cpu_pct", "java CPU %", "{:.0f}"), ("worker_rss_mb", "worker RSS MB", "{:.0f}"),
)


def fmt(value: Any, pattern: str) -> str:
    """Format one cell; NaN and None print as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns=TABLE_COLUMNS) -> str:
    """A GitHub markdown table of `rows` (dicts) over `columns` (key, header, format)."""
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(key), pattern) for key, _, pattern in columns) + " |"
            for row in rows]
    return "\n".join([header, rule, *body])


def find(rows: Sequence[Mapping[str, Any]], config: str, mode: str = "closed", concurrency: int = 0) -> dict:
    """The row of `config` under that load; empty dict when it was not measured."""
    for row in rows:
        if row["config"] == config and row["mode"] == mode and (mode != "closed"
                                                                or row["concurrency"] == concurrency):
            return dict(row)
    return {}


def headline(rows: Sequence[Mapping[str, Any]], ceilings: Mapping[int, Mapping[str, Any]], tuned: str,
             bs1: str, baseline: str) -> list[stats.Verdict]:
    """The three ratios of issue 6, each from rows measured in the same run."""
    tuned8, base8 = find(rows, tuned, concurrency=8), find(rows, baseline, concurrency=8)
    tuned1, bs1_1 = find(rows, tuned, concurrency=1), find(rows, bs1, concurrency=1)
    batch = tuned8.get("batch_size", 0)
    ceiling = ceilings.get(batch, {}).get("images_per_s", math.nan)
    nan = math.nan
    return [
        stats.check("serving efficiency (TorchServe c=8 / in-process, same batch)",
                    stats.ratio(tuned8.get("throughput", nan), ceiling), ">= 0.95"),
        stats.check("ours (tuned) vs mmdet-style baseline, throughput at c=8",
                    stats.ratio(tuned8.get("throughput", nan), base8.get("throughput", nan)), None),
        stats.check("low-traffic penalty (c=1 p50, tuned / batch_size 1)",
                    stats.ratio(tuned1.get("p50_ms", nan), bs1_1.get("p50_ms", nan)), "<= 1.05"),
    ]


def verdict_table(verdicts: Sequence[stats.Verdict]) -> str:
    """Markdown table of the headline ratios; a missed target is bold."""
    lines = ["| ratio | value | target | met |", "|---|---|---|---|"]
    for v in verdicts:
        met = "-" if v.met is None else ("yes" if v.met else "**no**")
        lines.append(f"| {v.name} | {fmt(v.value, '{:.3f}')} | {v.target} | {met} |")
    return "\n".join(lines)


def ceiling_table(ceilings: Mapping[int, Mapping[str, Any]]) -> str:
    """Markdown table of the in-process measurements, by batch size."""
    lines = ["| batch | images/s | ms per batch | threads | device |", "|---|---|---|---|---|"]
    for batch, c in sorted(ceilings.items()):
        lines.append(f"| {batch} | {c['images_per_s']:.3f} | {c['ms_per_batch']:.0f} | {c['threads']} | "
                     f"{c['device']} |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Every row, every field, in one CSV."""
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
