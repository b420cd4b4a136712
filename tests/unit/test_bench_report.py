"""bench.report and bench.render: headline ratios from rows, and the markdown they render to."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from bench import render, report


def row(config: str, concurrency: int, throughput: float, p50: float, batch_size: int = 4) -> dict:
    return {"config": config, "handler": "ours", "mode": "closed", "concurrency": concurrency, "rate": 0.0,
            "requests": 10, "errors": 0, "throughput": throughput, "p50_ms": p50, "p95_ms": p50 * 1.2,
            "p99_ms": p50 * 1.3, "mean_batch": 3.5, "batch_hist": "4x2", "forward_ms": 400.0,
            "worker_cpu_pct": 99.0, "frontend_cpu_pct": 3.0, "worker_rss_mb": 700.0, "batch_size": batch_size}


ROWS = [row("tuned", 1, 5.0, 105.0), row("tuned", 8, 9.5, 800.0), row("one", 1, 9.0, 100.0, 1),
        row("base", 8, 5.0, 1500.0)]
CEILINGS = {4: {"images_per_s": 10.0, "ms_per_batch": 400.0, "threads": 1, "device": "cpu"}}


def test_headline_ratios_come_from_the_right_rows() -> None:
    efficiency, versus, penalty = report.headline(ROWS, CEILINGS, "tuned", "one", "base")
    assert efficiency.value == pytest.approx(0.95) and efficiency.met is True
    assert versus.value == pytest.approx(1.9) and versus.met is None
    assert penalty.value == pytest.approx(1.05) and penalty.met is True


def test_headline_missing_rows_give_nan_not_a_crash() -> None:
    efficiency, versus, penalty = report.headline(ROWS, {}, "tuned", "absent", "base")
    assert math.isnan(efficiency.value) and efficiency.met is None
    assert math.isnan(penalty.value)


def test_markdown_table_formats_and_blanks_nan() -> None:
    table = report.markdown_table([row("tuned", 8, 9.5, math.nan)]).splitlines()
    assert table[0].startswith("| config | handler | load | conc |")
    assert len(table) == 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:4] == ["tuned", "ours", "closed", "8"]
    assert cells[7] == "9.50" and cells[8] == "-"


def test_verdict_table_flags_misses() -> None:
    verdicts = report.headline(ROWS, {4: {**CEILINGS[4], "images_per_s": 20.0}}, "tuned", "one", "base")
    text = report.verdict_table(verdicts)
    assert "| 0.475 | >= 0.95 | **no** |" in text


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    report.write_csv(ROWS, path)
    with path.open() as stream:
        back = list(csv.DictReader(stream))
    assert [r["config"] for r in back] == ["tuned", "tuned", "one", "base"]
    assert float(back[1]["throughput"]) == 9.5


def test_document_has_header_sections_and_coldstart_note() -> None:
    section = render.model_section("tiny", ROWS, CEILINGS, report.headline(ROWS, CEILINGS, "tuned", "one",
                                                                           "base"), ["tiny_x.png"])
    header = {"started": "t", "elapsed_s": 12.0, "machine": "m", "load_before": "0.1", "load_after": "0.2",
              "command": "python -m bench.run"}
    text = render.document(header, [section], {})
    assert text.startswith("# codetr-serve benchmark")
    assert "## tiny" in text and "![tiny_x.png](tiny_x.png)" in text
    assert "not run (--skip-coldstart)" in text
