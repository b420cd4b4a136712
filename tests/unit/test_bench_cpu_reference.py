"""bench.cpu's reference path: the second process, its protocol, the parity check and the table.

The published Co-DETR code is not in this repository, so a stand-in package plays it: our own classes
registered again under the reference's type names, from a package the child imports by file path, exactly
as it imports mmdetection's projects/CO-DETR/codetr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cpu, cpu_reference

REPO = Path(__file__).resolve().parents[2]

STAND_IN = '''"""Stand-in for mmdetection's projects/CO-DETR/codetr: our classes under the same type names."""
import codetr_serve.models as ours
from mmdet.registry import MODELS

for name in {types!r}:
    MODELS.register_module(name=name, force=True,
                           module=type(name, (getattr(ours, name),), {{"__module__": __name__}}))
'''


def write_package(root: Path, text: str) -> Path:
    folder = root / cpu_reference.PACKAGE
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(text)
    return root


def test_reference_process_runs_beside_ours_in_abba_order_and_matches_mmcvs_path(tmp_path: Path) -> None:
    src = write_package(tmp_path, STAND_IN.format(types=cpu_reference.TYPES))
    completed = subprocess.run(
        [sys.executable, "-m", "bench.cpu", "--child", "tiny", "--paths", "reference", "fallback",
         "--reps", "2", "--threads", "2", "--no-profile", "--reference-src", str(src)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    assert [r["path"] for r in result["runs"]] == ["reference", "fallback", "fallback", "reference"]
    assert all(r["forward_s"] > 0 and r["detections"] > 0 and not r["errors"] for r in result["runs"])
    assert set(result["reference_types"].values()) == {cpu_reference.MODULE}  # the package's classes ran
    assert result["peak_rss_mb"]["reference"] > 0 and result["warmup_s"]["reference"] > 0
    # Same code, weights, image and thread count in both processes: the same detections, bit for bit.
    parity = result["parity"]["fallback"]
    assert parity["equal"] and parity["within_tol"] == parity["ours"] == parity["reference"] > 0
    assert parity["max_box_diff_px"] == 0 and parity["max_score_diff"] == 0
    table = cpu.model_table(result)
    assert "| reference |" in table and "speedup vs reference" in table
    assert "fallback vs reference, last forward: equal" in table


def test_a_reference_that_fails_to_import_is_reported_with_its_reason(tmp_path: Path) -> None:
    src = write_package(tmp_path, "raise ImportError('this checkout is broken')\n")
    process = cpu_reference.ReferenceProcess(src, REPO / "config" / "co_dino_tiny.py", tmp_path / "w",
                                             tmp_path / "i", 1, tmp_path / "reference.log")
    with pytest.raises(RuntimeError, match="this checkout is broken"), process:
        pass
    assert process.process.returncode not in (None, 0)


def test_bench_refuses_the_reference_path_without_the_reference_code(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cpu.parse_args(["--paths", "reference", "fast"])
    assert "--reference-src" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cpu.parse_args(["--paths", "reference", "--reference-src", str(tmp_path)])
    assert "git clone" in capsys.readouterr().err


def detections(*rows: tuple[float, float, float, float, float, int]) -> dict:
    return {"bboxes": [list(r[:4]) for r in rows], "scores": [r[4] for r in rows],
            "labels": [r[5] for r in rows]}


def test_detections_are_compared_order_free_with_their_largest_differences() -> None:
    ours = detections((0, 0, 10, 10, 0.9, 1), (5, 5, 50, 60, 0.5, 2), (5, 5, 50, 60, 0.4, 3))
    shuffled = detections((5, 5, 50, 60.5, 0.401, 3), (0, 0, 10, 10, 0.9, 1), (5, 5, 50, 60, 0.5, 2))
    same = cpu_reference.compare(ours, shuffled)
    assert same["equal"] and same["matched"] == 3
    assert same["max_box_diff_px"] == pytest.approx(0.5) and same["max_score_diff"] == pytest.approx(0.001)

    relabelled = detections((0, 0, 10, 10, 0.9, 1), (5, 5, 50, 60, 0.5, 2), (5, 5, 50, 60, 0.4, 4))
    one_more = detections((0, 0, 10, 10, 0.9, 1), (5, 5, 50, 60, 0.5, 2), (5, 5, 50, 60, 0.4, 3),
                          (1, 1, 2, 2, 0.1, 0))
    assert cpu_reference.compare(ours, relabelled)["matched"] == 2
    decayed = detections((0, 0, 10, 10, 0.9, 1), (5, 5, 50, 60, 0.1, 2), (5, 5, 50, 60, 0.4, 3))
    flipped = cpu_reference.compare(ours, decayed)  # soft-NMS decayed one box in one run only
    assert flipped["matched"] == 3 and flipped["within_tol"] == 2 and not flipped["equal"]
    assert flipped["max_score_diff"] == pytest.approx(0.4)
    assert not cpu_reference.compare(ours, relabelled)["equal"]
    assert not cpu_reference.compare(ours, one_more)["equal"]
    assert not cpu_reference.compare(ours, detections((0, 0, 13, 10, 0.9, 1)))["equal"]


def test_table_gives_speedups_against_both_bases_with_their_pair_ranges() -> None:
    runs = [("reference", 8.0), ("fallback", 4.0), ("fast", 1.0), ("fast", 1.0), ("fallback", 4.0),
            ("reference", 6.0)]
    result = {"model": "r50", "threads": 2, "forward_size": [1333, 800],
              "peak_rss_mb": {"reference": 6700.0, "fallback": 7700.0, "fast": 3100.0},
              "runs": [{"path": p, "forward_s": s} for p, s in runs]}
    rows = {line.split(" | ")[0][2:]: line for line in cpu.model_table(result).splitlines()
            if line.startswith("| ") and not line.startswith("| path")}
    assert rows["fast"].endswith("| 4.00x (pairs 4.00-4.00x) | 7.00x (pairs 6.00-8.00x) |")
    assert rows["reference"].endswith("| 6700 | 0.57x (pairs 0.50-0.67x) | - |")
    assert "vs reference, last forward" not in cpu.model_table(result)  # no parity without detections
