"""`python -m codetr_serve.tools.doctor`: print the serving stack's version matrix and what is wrong with it.

Exit status 0 when the stack can serve (no error findings), 1 otherwise; `--json` for machines.
Every probe catches its own failure, so a broken stack is diagnosed instead of crashing the doctor.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from codetr_serve.tools.cuda_archs import fatbin_archs
from codetr_serve.tools.doctor_checks import StackFacts, run_checks
from codetr_serve.tools.doctor_report import render_json, render_text

Facts = MutableMapping[str, Any]
PROBE_TIMEOUT_S = 30
CONSTRAINTS = Path("requirements") / "constraints.txt"
REPO_ROOT = Path(__file__).resolve().parents[2]

# --- pure parsers (the probes feed them command output and file text) -------------------------------------


def normalize_name(name: str) -> str:
    """PEP 503 name, so `PyYAML`, `pyyaml` and `opencv_python` compare equal to their dist names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """`name==version` lines of a pip constraints file; comments, markers and other specifiers ignored."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line.split("#", 1)[0])
        if match:
            pins[normalize_name(match.group(1))] = match.group(2)
    return pins


def optional_pin_names(text: str) -> frozenset[str]:
    """Pins under a `# --- optional: ...` header of constraints.txt (up to the next `# ---` header): the
    tools' own venvs and the CUDA stack, which a `make setup` venv may rightly lack."""
    names: set[str] = set()
    optional = False
    for line in text.splitlines():
        if line.startswith("# ---"):
            optional = line.startswith("# --- optional")
        elif optional:
            names.update(parse_pins(line))
    return frozenset(names)


def read_version_window(init_source: str, package: str) -> tuple[str, str] | None:
    """The [min, max) window mmdet's __init__ asserts for `package`, read from its text, not by importing."""
    found = [re.search(rf"{package}_{bound}_version\s*=\s*['\"]([^'\"]+)['\"]", init_source)
             for bound in ("minimum", "maximum")]
    return (found[0].group(1), found[1].group(1)) if found[0] and found[1] else None


def parse_java_major(version_output: str) -> int | None:
    """Major version from `java -version`: 'version "17.0.15"' -> 17, legacy 'version "1.8.0_292"' -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    first = int(match.group(1))
    return int(match.group(2) or 0) if first == 1 else first


def describe(exc: BaseException) -> str:
    """One short line for an exception (C-extension import errors can be pages long)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found among `names`, without importing it."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# --- probes: each fills `out` and may raise; gather_facts records the failure ------------------------------


def probe_torch(out: Facts) -> None:
    """torch version, its CUDA build and the GPU it can use."""
    import torch

    out.update(torch_version=torch.__version__, torch_cuda=torch.version.cuda,
               cuda_available=torch.cuda.is_available())
    if out["torch_cuda"]:  # the compile-time list, readable without a GPU
        out["torch_arch_list"] = tuple(torch._C._cuda_getArchFlags().split())
    if out["cuda_available"]:
        major, minor = torch.cuda.get_device_capability(0)
        out.update(cuda_device=torch.cuda.get_device_name(0), cuda_capability=f"{major}.{minor}")


def probe_gpu_driver(out: Facts) -> None:
    """The GPU the NVIDIA driver sees, so a CPU-only torch on a GPU machine can be reported."""
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
        out.update(parse_smi_gpu(proc.stdout) if proc.returncode == 0 else {})


def parse_smi_gpu(csv_text: str) -> dict[str, str | None]:
    """The first GPU of `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader`."""
    fields = [field.strip() for field in (csv_text.strip().splitlines() or [""])[0].split(",")]
    if len(fields) < 2 or not fields[0]:
        return {}
    capability = fields[2] if len(fields) > 2 and re.fullmatch(r"\d+\.\d+", fields[2]) else None
    return {"driver_gpu": f"{fields[0]} driver {fields[1]}", "driver_capability": capability}


def _run_nms(device: str) -> str | None:
    """Run mmcv's compiled nms on two boxes: an import alone does not prove the .so matches this torch."""
    import torch
    from mmcv.ops import nms

    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]], device=device)
        _, keep = nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.5)
        return None if keep.tolist() == [0] else f"nms kept {keep.tolist()}, expected [0]"
    except Exception as exc:  # the point of the probe is to report this
        return describe(exc)


def probe_mmcv(out: Facts) -> None:
    """mmcv version, mmcv vs mmcv-lite, and whether its compiled ops import and run (CPU, then GPU)."""
    out["mmcv_dist"] = "mmcv" if dist_version("mmcv", "mmcv-full") else "mmcv-lite" if dist_version(
        "mmcv-lite") else None
    import mmcv

    out["mmcv_version"] = mmcv.__version__
    try:
        importlib.import_module("mmcv._ext")
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    except Exception as exc:  # mmcv-lite, or a .so built against another torch ("undefined symbol")
        out["mmcv_ops_import_error"] = describe(exc)
        return
    compiled_cuda = get_compiling_cuda_version()
    out.update(mmcv_cuda=None if compiled_cuda == "not available" else compiled_cuda,
               mmcv_compiler=get_compiler_version(), mmcv_ops_run_error=_run_nms("cpu"))
    if out["mmcv_cuda"]:
        out["mmcv_arch_list"] = fatbin_archs(importlib.import_module("mmcv._ext").__file__)
    out["mmcv_ops_ok"] = out["mmcv_ops_run_error"] is None
    if out.get("cuda_available") and out["mmcv_cuda"]:
        out["mmcv_gpu_run_error"] = _run_nms("cuda")


def probe_cpu_msda(out: Facts) -> None:
    """Whether our compiled CPU deformable attention op loads and passes its self-check (else mmcv's path)."""
    from codetr_serve.ops.msda import load_op

    status = load_op()
    out.update(cpu_msda_path="op" if status.available else "fallback", cpu_msda_detail=status.describe(),
               cpu_msda_stale=status.stale)


def probe_mmdet(out: Facts) -> None:
    """mmdet version, the mmcv/mmengine windows its __init__ asserts (read as text), then a guarded import."""
    out.update(mmdet_version=dist_version("mmdet"), mmengine_version=dist_version("mmengine"))
    spec = importlib.util.find_spec("mmdet")
    if spec is None or spec.origin is None:
        return
    source = Path(spec.origin).read_text(encoding="utf-8")
    out.update(mmdet_mmcv_window=read_version_window(source, "mmcv"),
               mmdet_mmengine_window=read_version_window(source, "mmengine"))
    try:
        importlib.import_module("mmdet")
    except Exception as exc:  # mmdet asserts its windows at import time
        out["mmdet_import_error"] = describe(exc)


def probe_packages(out: Facts) -> None:
    """numpy, opencv (really imported: an ABI mismatch with numpy shows up here), TorchServe, the archiver."""
    out.update(numpy_version=dist_version("numpy"), archiver_version=dist_version("torch-model-archiver"),
               torchserve_version=dist_version("torchserve"))
    if out["torchserve_version"] is None and importlib.util.find_spec("ts") is not None:
        out["torchserve_version"] = importlib.import_module("ts.version").__version__
    out["opencv_version"] = dist_version("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                                         "opencv-contrib-python-headless")
    try:
        cv2 = importlib.import_module("cv2")
        # The real import, because a numpy ABI mismatch only shows there; the dist version is more precise.
        out["opencv_version"] = out["opencv_version"] or cv2.__version__
    except Exception as exc:
        out["opencv_import_error"] = describe(exc)


def probe_java(out: Facts) -> None:
    """The java TorchServe will start: $JAVA_HOME/bin/java when JAVA_HOME is set, else `java` on PATH."""
    java_home = os.environ.get("JAVA_HOME") or None
    path = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    out["java_home"] = java_home
    if not path or not os.access(path, os.X_OK):
        return
    out["java_path"] = path
    proc = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                          check=False)
    text = proc.stderr or proc.stdout  # `java -version` writes to stderr
    out.update(java_version=(text.strip().splitlines() or [""])[0], java_major=parse_java_major(text))


def probe_pins(out: Facts) -> None:
    """Pins from requirements/constraints.txt (read now, so the file stays the single source) vs installed."""
    override = os.environ.get("CODETR_CONSTRAINTS")  # e.g. the copy a container image ships
    candidates = (*((Path(override),) if override else ()), REPO_ROOT / CONSTRAINTS, Path.cwd() / CONSTRAINTS)
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        return
    text = path.read_text(encoding="utf-8")
    pins = parse_pins(text)
    out.update(constraints_path=str(path), pins=pins, optional_pins=optional_pin_names(text),
               installed={name: dist_version(name) for name in pins})


PROBES: tuple[Callable[[Facts], None], ...] = (probe_torch, probe_gpu_driver, probe_mmcv, probe_cpu_msda,
                                               probe_mmdet, probe_packages, probe_java, probe_pins)


def gather_facts() -> StackFacts:
    """Run every probe; a probe that raises leaves its fields empty and its reason in `errors`."""
    out: Facts = {"python_version": platform.python_version()}
    errors: dict[str, str] = {}
    for probe in PROBES:
        try:
            probe(out)
        except Exception as exc:
            errors[probe.__name__.removeprefix("probe_")] = describe(exc)
    return StackFacts(**out, errors=errors)


def main(argv: list[str] | None = None) -> int:
    """Gather facts, run the checks, print; 0 when the stack can serve, 1 when an error finding exists."""
    parser = argparse.ArgumentParser(prog="python -m codetr_serve.tools.doctor",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    facts = gather_facts()
    findings = run_checks(facts)
    print(render_json(facts, findings) if args.json else render_text(facts, findings))
    return 1 if any(finding.severity == "error" for finding in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
