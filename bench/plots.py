"""PNG figures per model: latency vs load and throughput vs concurrency, one line per serving config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def _closed_by_config(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    series: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["mode"] == "closed" and row["throughput"] == row["throughput"]:
            series.setdefault(row["config"], []).append(row)
    return {name: sorted(points, key=lambda r: r["concurrency"]) for name, points in series.items()}


def plot_model(model: str, rows: Sequence[Mapping[str, Any]], ceilings: Mapping[int, Mapping[str, Any]],
               out_dir: Path) -> list[Path]:
    """Two PNGs for `model`; returns their paths."""
    series = _closed_by_config(rows)
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(13, 5))
    for name, points in series.items():
        x = [p["concurrency"] for p in points]
        (line,) = lat.plot(x, [p["p50_ms"] for p in points], marker="o", label=f"{name} p50")
        lat.plot(x, [p["p95_ms"] for p in points], linestyle="--", alpha=0.5, color=line.get_color())
        thr.plot([p["throughput"] for p in points], [p["p50_ms"] for p in points], marker="o", label=name)
    lat.set(xlabel="concurrency (closed loop)", ylabel="latency ms (solid p50, dashed p95)",
            title=f"{model}: latency vs load")
    thr.set(xlabel="throughput img/s", ylabel="p50 latency ms", title=f"{model}: latency vs throughput")
    lat.legend(fontsize=7)
    thr.legend(fontsize=7)
    latency_png = out_dir / f"{model}_latency_vs_load.png"
    fig.tight_layout()
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, points in series.items():
        ax.plot([p["concurrency"] for p in points], [p["throughput"] for p in points], marker="o", label=name)
    for batch, c in sorted(ceilings.items()):
        ax.axhline(c["images_per_s"], linestyle=":", color="grey")
        ax.annotate(f"in-process batch {batch}", (1, c["images_per_s"]), fontsize=7)
    ax.set(xlabel="concurrency (closed loop)", ylabel="throughput img/s", title=f"{model}: throughput")
    ax.legend(fontsize=7)
    throughput_png = out_dir / f"{model}_throughput_vs_concurrency.png"
    fig.tight_layout()
    fig.savefig(throughput_png, dpi=110)
    plt.close(fig)
    return [latency_png, throughput_png]
