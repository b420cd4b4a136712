"""What `python -m codetr_serve.tools.doctor` prints: the version matrix and findings, or JSON."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import asdict

from codetr_serve.tools.doctor_checks import COMPONENTS, SEVERITY_RANK, Finding, StackFacts, same_version


def _finding_text(label: str, finding: Finding) -> str:
    """One finding, wrapped to the terminal-friendly width; the fix stays on one line so it can be copied."""
    text = textwrap.fill(f"[{finding.component}] {finding.what}", width=110, initial_indent=f"{label:<7}",
                         subsequent_indent=" " * 7, break_long_words=False, break_on_hyphens=False)
    return text + (f"\n       fix: {finding.fix}" if finding.fix else "")


def _or_missing(version: str | None, detail: str = "") -> str:
    """The version with its detail, or MISSING."""
    return f"{version}{detail}" if version else "MISSING"


def matrix_rows(facts: StackFacts) -> dict[str, str]:
    """Component -> what is installed, in the order of COMPONENTS."""
    torch_build = (f" (CUDA {facts.torch_cuda}; kernels {' '.join(facts.torch_arch_list) or 'unknown'})"
                   if facts.torch_cuda else " (CPU build)")
    unusable = f"(compute capability {facts.driver_capability or '?'}; not usable by torch)"
    gpu = (f"{facts.cuda_device} (compute capability {facts.cuda_capability})" if facts.cuda_available
           else f"{facts.driver_gpu} {unusable}" if facts.driver_gpu else "none visible (CPU serving)")
    ops_cuda = (f"CUDA {facts.mmcv_cuda} kernels {' '.join(facts.mmcv_arch_list) or '(archs unread)'}"
                if facts.mmcv_cuda else "CPU-only")
    ops = (f"nms runs; {ops_cuda}; {facts.mmcv_compiler}" if facts.mmcv_ops_ok
           else facts.mmcv_ops_import_error or facts.mmcv_ops_run_error or "not verified")
    msda = ({"op": f"cpu_msda auto -> {facts.cpu_msda_detail}",
             "fallback": f"mmcv's pure-PyTorch path ({facts.cpu_msda_detail})"}.get(facts.cpu_msda_path or "")
            or f"not probed: {facts.errors.get('cpu_msda', 'unknown')}")
    if facts.cuda_available:
        msda += " (GPU workers use mmcv's CUDA kernel)"
    wants = f" (wants mmcv>={window[0]},<{window[1]})" if (window := facts.mmdet_mmcv_window) else ""
    differing = [name for name, pin in facts.pins.items()
                 if facts.installed.get(name) and not same_version(facts.installed[name], pin)]
    missing = [name for name in facts.pins
               if not facts.installed.get(name) and name not in facts.optional_pins]
    return {
        "python": f"{facts.python_version} ({sys.executable})",
        "torch": _or_missing(facts.torch_version, torch_build),
        "gpu": gpu,
        "mmcv": _or_missing(facts.mmcv_version, f" ({facts.mmcv_dist})" if facts.mmcv_dist != "mmcv" else ""),
        "mmcv ops": ops if facts.mmcv_version else "MISSING",
        "cpu msda": msda,
        "mmdet": _or_missing(facts.mmdet_version, wants),
        "mmengine": _or_missing(facts.mmengine_version),
        "numpy": _or_missing(facts.numpy_version),
        "opencv": _or_missing(facts.opencv_version),
        "torchserve": _or_missing(facts.torchserve_version),
        "torch-model-archiver": _or_missing(facts.archiver_version),
        "java": f"{facts.java_major} ({facts.java_path})" if facts.java_path else "MISSING",
        "pins": (f"{len(facts.pins)} in {facts.constraints_path} ({len(facts.optional_pins)} optional), "
                 f"{len(differing)} differ, {len(missing)} missing"
                 if facts.pins else "no requirements/constraints.txt: not checked"),
    }


def render_text(facts: StackFacts, findings: list[Finding]) -> str:
    """The matrix table (component | version | status), then the findings with their fix lines indented."""
    worst: dict[str, str] = {}
    for finding in findings:
        if SEVERITY_RANK[finding.severity] > SEVERITY_RANK[worst.get(finding.component, "ok")]:
            worst[finding.component] = finding.severity
    rows = matrix_rows(facts)
    width = max(len(text) for text in rows.values())
    lines = [f"{'component':<22} {'version':<{width}}  status", f"{'-' * 22} {'-' * width}  ------"]
    # Upper case only for problems, so they stand out in a column of "ok".
    lines += [f"{name:<22} {rows[name]:<{width}}  {worst[name].upper() if name in worst else 'ok'}"
              for name in COMPONENTS]
    problems = [finding for finding in findings if finding.severity != "ok"]
    notes = [finding for finding in findings if finding.severity == "ok"]
    lines.append("")
    lines += [_finding_text(finding.severity.upper(), finding) for finding in problems]
    lines += [_finding_text("note", finding) for finding in notes]
    errors = sum(finding.severity == "error" for finding in findings)
    verdict = "the stack can serve" if errors == 0 else "the stack cannot serve"
    lines.append(f"\n{verdict}: {errors} error(s), {len(problems) - errors} warning(s)")
    return "\n".join(lines)


def render_json(facts: StackFacts, findings: list[Finding]) -> str:
    """Machine output: the verdict, every fact and every finding."""
    can_serve = not any(finding.severity == "error" for finding in findings)
    return json.dumps({"can_serve": can_serve, "facts": asdict(facts),
                       "findings": [asdict(finding) for finding in findings]}, indent=2,
                      default=sorted)  # frozensets (optional_pins) as sorted lists
