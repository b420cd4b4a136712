"""bench/gpu_check.py's control flow on the CPU: every step stops at its budget and keeps what it measured."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from bench import gpu_check


@pytest.fixture()
def fake_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Steps that record calls: one measures rows then hangs past any budget, one fails, the rest are fast."""
    calls: dict[str, list] = {"ran": []}

    def quick(name):
        def step(_args, _clock, _state, _out):
            calls["ran"].append(name)
            return {"ok": name}
        return step

    def hangs(_args, _clock, _state, out):
        calls["ran"].append("sweep")
        out.setdefault("rows", []).append({"batch": 1})
        time.sleep(30)  # a call no estimate saw coming: only the hard deadline ends it
        return {"rows": out["rows"]}

    def fails(_args, _clock, _state, _out):
        raise RuntimeError("nvcc fatal: cannot find cusparse.h\nmore lines")

    steps = {name: quick(name) for name in gpu_check.STEPS}
    steps.update(sweep=hangs)
    calls["fails"] = [fails]
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    monkeypatch.setattr(gpu_check, "BUDGETS", {name: 1.0 for name in steps})
    return calls


def test_a_hanging_step_stops_at_its_budget_and_keeps_its_rows(fake_steps: dict[str, list]) -> None:
    started = time.monotonic()
    results = gpu_check.run_steps(argparse.Namespace(total_budget=6.0))
    assert time.monotonic() - started < 5  # 6 steps x 1 s at most, not the 30 s sleep
    assert results["sweep"]["rows"] == [{"batch": 1}]
    assert results["sweep"]["error"].startswith("stopped at its 1 s budget")
    assert results["torchserve"] == {"ok": "torchserve", "seconds": 0.0}  # the next step still runs
    assert fake_steps["ran"] == ["preflight", "kernels", "msda", "latency", "sweep", "torchserve"]


def test_a_failed_compile_skips_the_steps_that_need_the_kernels(fake_steps: dict[str, list],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu_check.STEPS, "kernels", fake_steps["fails"][0])
    results = gpu_check.run_steps(argparse.Namespace(total_budget=6.0))
    assert results["kernels"]["error"] == "RuntimeError: nvcc fatal: cannot find cusparse.h"
    assert {results[name]["error"] for name in ("msda", "latency", "sweep")} == {
        "skipped: mmcv's kernels did not compile"}
    assert fake_steps["ran"] == ["preflight", "torchserve"]


def test_clock_refuses_work_that_would_not_fit() -> None:
    clock = gpu_check.Clock(10)
    clock.check(5, "fits")
    with pytest.raises(gpu_check.OutOfBudget, match="batch 8: ~20 s needed"):
        clock.check(20, "batch 8")


def test_without_a_gpu_the_run_stops_after_the_preflight(fake_steps: dict[str, list],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu_check.STEPS, "preflight", gpu_check.step_preflight)
    args = argparse.Namespace(total_budget=6.0, dry_run=False)  # torch here sees no CUDA GPU
    results = gpu_check.run_steps(args)
    assert results["preflight"]["error"].startswith("RuntimeError: no CUDA GPU visible to torch")
    assert {results[name]["error"] for name in gpu_check.STEPS if name != "preflight"} == {
        "skipped: the preflight failed"}
    assert fake_steps["ran"] == []


def test_the_ext_shim_serves_the_compiled_ops_and_refuses_the_rest(tmp_path, monkeypatch) -> None:
    import sys
    import types

    from bench.gpu_check_mmcv import EXT_SHIM

    compiled = types.ModuleType("gpu_check_mmcv_ops")
    compiled.ms_deform_attn_forward = compiled.nms = compiled.softnms = lambda *a, **k: "kernel"
    monkeypatch.setitem(sys.modules, "gpu_check_mmcv_ops", compiled)
    (tmp_path / "fake_ext.py").write_text(EXT_SHIM)
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_ext

    assert fake_ext.nms(boxes=1, scores=2, iou_threshold=0.5, offset=0) == "kernel"
    assert hasattr(fake_ext, "roi_align_forward")  # mmcv.ops' import-time check passes ...
    with pytest.raises(NotImplementedError, match="'roi_align_forward' was not compiled for the GPU check"):
        fake_ext.roi_align_forward()  # ... and a call fails loudly instead of measuring something else


def test_cuda_home_skips_a_folder_without_cuda_headers(tmp_path, monkeypatch) -> None:
    from bench import gpu_check_mmcv

    wrapper_dir, toolkit = tmp_path / "bin", tmp_path / "cuda-13.0"
    for folder in (wrapper_dir, toolkit / "bin", toolkit / "include"):
        folder.mkdir(parents=True)
    (wrapper_dir / "nvcc").write_text("#!/bin/sh\nexec true\n")  # like /usr/local/bin/nvcc here
    (wrapper_dir / "nvcc").chmod(0o755)
    (toolkit / "bin" / "nvcc").write_text("")
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    monkeypatch.setattr(gpu_check_mmcv, "Path", lambda p: toolkit if p == "/usr/local/cuda" else Path(p))
    assert gpu_check_mmcv.cuda_home() == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", "/opt/given")
    assert gpu_check_mmcv.cuda_home() == "/opt/given"


def test_a_compiler_failure_is_reported_by_its_telling_line() -> None:
    exc = RuntimeError("Error building extension 'x': [1/6] c++ -MMD -MF a.o.d -I/long/include/paths\n"
                       "In file included from b.h:4,\n"
                       "CUDAContextLight.h:10:10: fatal error: cusparse.h: No such file or directory\n")
    expected = "CUDAContextLight.h:10:10: fatal error: cusparse.h: No such file or directory"
    assert gpu_check.error_line(exc) == expected
