"""Turn measured rows into the three headline ratios, markdown tables and a CSV. Pure apart from `write_*`."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import stats

SIDES = ("ceiling", "tuned", "baseline")  # the loaded sides of a paired round (bench/paired.py)

TABLE_COLUMNS = (
    ("config", "config", "{}"), ("handler", "handler", "{}"), ("mode", "load", "{}"),
    ("concurrency", "conc", "{}"), ("rate", "rate/s", "{:.2f}"), ("requests", "n", "{}"),
    ("errors", "err", "{}"), ("throughput", "img/s", "{:.2f}"), ("p50_ms", "p50 ms", "{:.0f}"),
    ("p95_ms", "p95 ms", "{:.0f}"), ("p99_ms", "p99 ms", "{:.0f}"), ("mean_batch", "mean batch", "{:.2f}"),
    ("batch_hist", "batches (size x n)", "{}"), ("forward_ms", "forward ms", "{:.0f}"),
    ("worker_cpu_pct", "worker CPU %", "{:.0f}"),
    ("frontend_cpu_pct", "java CPU %", "{:.0f}"), ("worker_rss_mb", "worker RSS MB", "{:.0f}"),
    ("source", "measured", "{}"),
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


def verdict_table(verdicts: Sequence[stats.Verdict]) -> str:
    """Markdown table of the headline ratios; a missed target is bold."""
    lines = ["| ratio | value | per-round range | 95 % interval of the round mean | target | met |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        met = "-" if v.met is None else ("yes" if v.met else "**no**")
        lines.append(f"| {v.name} | {fmt(v.value, '{:.3f}')} | {_span(v.spread)} | {_span(v.interval)} | "
                     f"{v.target} | {met} |")
    return "\n".join(lines)


def _span(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{fmt(pair[0], '{:.3f}')} - {fmt(pair[1], '{:.3f}')}"


def ceiling_table(ceilings: Mapping[int, Mapping[str, Any]]) -> str:
    """Markdown table of the in-process measurements, by batch size."""
    lines = ["| batch | images/s | ms per batch | threads | device | measured |", "|---|---|---|---|---|---|"]
    for batch, c in sorted(ceilings.items()):
        lines.append(f"| {batch} | {c['images_per_s']:.3f} | {c['ms_per_batch']:.0f} | {c['threads']} | "
                     f"{c['device']} | {c.get('source', 'one-shot')} |")
    return "\n".join(lines)


def rounds_table(rounds: Sequence[Mapping[str, Any]], ratios: Sequence[Mapping[str, float]]) -> str:
    """One line per paired round: the order, each side's figure and that round's three ratios."""
    lines = ["| round | order | in-process img/s | tuned c=8 img/s | baseline c=8 img/s | tuned c=1 p50 ms "
             "(forward) | bs1 c=1 p50 ms (forward) | efficiency | vs baseline | penalty |", "|" + "---|" * 10]
    for one, ratio in zip(rounds, ratios, strict=True):
        loaded, light = one["loaded"], one["light"]
        tput = [stats.ratio(loaded[s]["images"], loaded[s]["seconds"]) for s in SIDES]
        p50 = [f"{fmt(stats.percentile(light[s], 50), '{:.0f}')} "
               f"({fmt(light.get(f'{s}_forward_ms'), '{:.0f}')})" for s in ("tuned", "bs1")]
        cells = [str(one["round"]), " > ".join(one["order"]), *(fmt(v, "{:.3f}") for v in tput), *p50,
                 *(fmt(ratio[k], "{:.3f}") for k in ("efficiency", "versus_baseline", "penalty"))]
        lines.append("| " + " | ".join(cells) + " |")
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


def decomposition_table(split: Mapping[str, float]) -> str:
    """Where the efficiency and the penalty come from: the model's speed per process vs the serving path."""
    f = {key: fmt(value, "{:.3f}") for key, value in split.items()}
    return "\n".join([
        "| ratio | part due to the model's own speed in each process | serving path "
        "| the ratio with forwards equal |", "|---|---|---|---|",
        f"| serving efficiency | {f['efficiency_speed']} | busy share of wall time: {f['duty_served']} "
        f"served vs {f['duty_inprocess']} in-process; the served worker waits "
        f"{fmt(split.get('wait_served_ms', float('nan')), '{:.1f}')} ms for each next batch (median) "
        f"| {f['efficiency_duty']} |",
        f"| low-traffic penalty | {f['penalty_forward']} | rest of a c=1 request: "
        f"{fmt(split['rest_tuned_ms'], '{:.0f}')} ms tuned vs {fmt(split['rest_bs1_ms'], '{:.0f}')} ms bs1 "
        f"| {f['penalty_forward_equal']} |"])
