"""bench.report and bench.render: headline ratios from rows, and the markdown they render to."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bench import render, report, stats


def row(config: str, concurrency: int, throughput: float, p50: float, batch_size: int = 4) -> dict:
    return {"config": config, "handler": "ours", "mode": "closed", "concurrency": concurrency, "rate": 0.0,
            "requests": 10, "errors": 0, "throughput": throughput, "p50_ms": p50, "p95_ms": p50 * 1.2,
            "p99_ms": p50 * 1.3, "mean_batch": 3.5, "batch_hist": "4x2", "forward_ms": 400.0,
            "worker_cpu_pct": 99.0, "frontend_cpu_pct": 3.0, "worker_rss_mb": 700.0, "batch_size": batch_size}


ROWS = [row("tuned", 1, 5.0, 105.0), row("tuned", 8, 9.5, 800.0), row("one", 1, 9.0, 100.0, 1),
        row("base", 8, 5.0, 1500.0)]
CEILINGS = {4: {"images_per_s": 10.0, "ms_per_batch": 400.0, "threads": 1, "device": "cpu"}}


def test_markdown_table_formats_and_blanks_nan() -> None:
    table = report.markdown_table([row("tuned", 8, 9.5, math.nan)]).splitlines()
    assert table[0].startswith("| config | handler | load | conc |")
    assert len(table) == 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:4] == ["tuned", "ours", "closed", "8"]
    assert cells[7] == "9.50" and cells[8] == "-"


def test_verdict_table_flags_misses_and_shows_the_spread() -> None:
    verdicts = [stats.check("efficiency", 0.475, ">= 0.95", [0.41, 0.52, 0.47]),
                stats.check("versus", 1.9, None)]
    text = report.verdict_table(verdicts)
    # mean 0.4667, sd 0.0551, t(2 df) 4.303: half-width 0.1368
    assert "| efficiency | 0.475 | 0.410 - 0.520 | 0.330 - 0.603 | >= 0.95 | **no** |" in text
    assert "| versus | 1.900 | - | - | - | - |" in text


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    report.write_csv(ROWS, path)
    with path.open() as stream:
        back = list(csv.DictReader(stream))
    assert [r["config"] for r in back] == ["tuned", "tuned", "one", "base"]
    assert float(back[1]["throughput"]) == 9.5


def test_document_has_header_sections_and_coldstart_note() -> None:
    section = render.model_section("tiny", ROWS, CEILINGS, [stats.check("efficiency", 0.97, ">= 0.95")],
                                   ["tiny_x.png"])
    header = {"started": "t", "elapsed_s": 12.0, "machine": "m", "load_before": "0.1", "load_after": "0.2",
              "command": "python -m bench.run"}
    text = render.document(header, [section], {})
    assert text.startswith("# codetr-serve benchmark")
    assert "| efficiency | 0.970 | - | - | >= 0.95 | yes |" in text
    assert "## tiny" in text and "![tiny_x.png](tiny_x.png)" in text
    assert "not run (--skip-coldstart)" in text
