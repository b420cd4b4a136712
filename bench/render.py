"""The markdown report of one `make bench` run (pure: data in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench import report


def model_section(name: str, rows: Sequence[Mapping[str, Any]], ceilings: Mapping[int, Mapping[str, Any]],
                  verdicts: Sequence[Any], plots: Sequence[str], rounds: Sequence[Mapping[str, Any]] = (),
                  round_ratios: Sequence[Mapping[str, float]] = (),
                  split: Mapping[str, float] | None = None) -> str:
    """Ratios, the paired rounds, ceiling, the full table and the plots for one model."""
    parts = [f"## {name}", "", "### Headline ratios (alternating rounds: one server, one machine state)", "",
             "Pooled over every round (images / seconds; p50 of every request); the range is the lowest "
             "and highest single-round value.", "", report.verdict_table(verdicts), ""]
    if split:
        parts += ["Where they come from (forward = the worker's own CoDetrForwardSeconds, and the same timer "
                  "in-process):", "", report.decomposition_table(split), ""]
    if rounds:
        parts += ["### Paired rounds", "", report.rounds_table(rounds, round_ratios), ""]
    parts += ["### In-process ceiling (DetectorCore.handle, no TorchServe)", "",
             report.ceiling_table(ceilings), "",
             "### Every config x load", "", report.markdown_table(rows), ""]
    parts += [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def coldstart_section(cold: Mapping[str, Any]) -> str:
    """Cold-start figures of the full-size Swin-L model."""
    if not cold:
        return "## Cold start\n\nnot run (--skip-coldstart)\n"
    bare = cold["bare_load"]
    lines = ["## Cold start: Co-DINO Swin-L, full size, random weights", "",
             f"model-config: `{cold['model_config']}` (no warm-up forward; the first prediction runs at "
             "320x192, so it measures start-up, not a minutes-long CPU forward at 2048x1280)", "",
             "| format | archive.sh s | size MB | start -> worker READY s | first request s "
             "| start -> first 200 s | peak worker RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for fmt in ("no-archive", "zip"):
        serve = cold[f"serve_{fmt}"]
        lines.append(f"| {fmt} | {cold[f'archive_{fmt}_s']:.1f} | {cold[f'archive_{fmt}_mb']:.0f} | "
                     f"{serve['ready_s']:.1f} | {serve['first_request_s']:.1f} | "
                     f"{serve['first_prediction_s']:.1f} | "
                     f"{serve['peak_worker_rss_mb']:.0f} |")
    lines += ["", "Bare in-process load (same folder; `build_detector` = build + read safetensors + apply):",
              "",
              "| import + config s | read safetensors s | build + load s | total s |", "|---|---|---|---|",
              f"| {bare['import_and_config_s']:.1f} | {bare['read_safetensors_s']:.1f} | "
              f"{bare['build_and_load_s']:.1f} | {bare['total_s']:.1f} |"]
    return "\n".join(lines) + "\n"


def document(header: Mapping[str, Any], sections: Sequence[str], cold: Mapping[str, Any]) -> str:
    """The whole report.md."""
    lines = ["# codetr-serve benchmark", "",
             f"- started: {header['started']}, took {header['elapsed_s']:.0f} s",
             f"- machine: {header['machine']}",
             f"- load average before / after: {header['load_before']} / {header['load_after']}",
             f"- command: `{header['command']}`", ""]
    return "\n".join(lines) + "\n" + "\n".join(sections) + "\n" + coldstart_section(cold)
