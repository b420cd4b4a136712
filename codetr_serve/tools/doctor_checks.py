"""Facts about the serving stack and the pure checks over them: no torch/mmcv/mmdet import here, so a test
simulates any broken stack by constructing a StackFacts."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from packaging.version import InvalidVersion, Version

Severity = Literal["error", "warn", "ok"]
SEVERITY_RANK: Mapping[str, int] = {"ok": 0, "warn": 1, "error": 2}
MIN_JAVA = 17  # TorchServe 0.12's frontend is compiled for Java 17
WEIGHTS_ONLY_DEFAULT_SINCE = "2.6"  # torch.load(weights_only=True) became the default in torch 2.6
Check = Callable[["StackFacts"], list["Finding"]]


@dataclass(frozen=True)
class Finding:
    """One thing the doctor has to say: what is wrong (or worth knowing) and the command that fixes it."""

    severity: Severity
    component: str
    what: str
    fix: str = ""


@dataclass(frozen=True)
class StackFacts:
    """Everything the doctor learned about the stack; None means "not installed / could not be read"."""

    python_version: str = ""
    torch_version: str | None = None
    torch_cuda: str | None = None  # torch.version.cuda: None for a CPU build
    cuda_available: bool = False
    cuda_device: str | None = None
    cuda_capability: str | None = None  # "8.9"
    torch_arch_list: tuple[str, ...] = ()  # what torch's kernels are compiled for ("sm_90", "compute_90")
    driver_gpu: str | None = None  # what nvidia-smi sees, even when torch cannot use it
    driver_capability: str | None = None  # its compute capability per nvidia-smi ("9.0")
    mmcv_version: str | None = None
    mmcv_dist: str | None = None  # "mmcv" or "mmcv-lite" (the distribution that provides the module)
    mmcv_ops_ok: bool = False  # a compiled op (nms) really ran on CPU
    mmcv_ops_import_error: str | None = None
    mmcv_ops_run_error: str | None = None
    mmcv_gpu_run_error: str | None = None
    mmcv_cuda: str | None = None  # CUDA the ops were compiled with; None for CPU-only ops
    mmcv_compiler: str | None = None
    mmcv_arch_list: tuple[str, ...] = ()  # read from the .nv_fatbin section of mmcv/_ext*.so
    cpu_msda_path: str | None = None  # "op" (our compiled CPU MSDA op), "fallback" (mmcv), None: not probed
    cpu_msda_detail: str | None = None  # the library and its kernel, or why it cannot be used
    cpu_msda_stale: bool = False  # built from another msda_cpu.cpp than the installed one
    mmdet_version: str | None = None
    mmdet_mmcv_window: tuple[str, str] | None = None  # [min, max) read from mmdet/__init__.py's text
    mmdet_mmengine_window: tuple[str, str] | None = None
    mmdet_import_error: str | None = None
    mmengine_version: str | None = None
    numpy_version: str | None = None
    opencv_version: str | None = None
    opencv_import_error: str | None = None
    torchserve_version: str | None = None
    archiver_version: str | None = None
    java_home: str | None = None
    java_path: str | None = None
    java_version: str | None = None  # first line of `java -version`
    java_major: int | None = None
    constraints_path: str | None = None
    pins: Mapping[str, str] = field(default_factory=dict)  # PEP 503 name -> pinned version
    installed: Mapping[str, str | None] = field(default_factory=dict)  # same names -> installed version
    optional_pins: frozenset[str] = frozenset()  # tools' own venvs, the CUDA stack: checked where installed
    errors: Mapping[str, str] = field(default_factory=dict)  # probe name -> why it failed


def version_key(version: str) -> Version:
    """A comparable PEP 440 version without its local tag (2.13.0+cpu == 2.13.0); unparseable -> 0."""
    try:
        return Version(Version(version.strip()).public)
    except InvalidVersion:
        return Version("0")


def same_version(installed: str, pinned: str) -> bool:
    """PEP 440 equality without local tags: 13.0.3.0 is the pin 13.0.3, 2.13.0+cu130 is 2.13.0."""
    return version_key(installed) == version_key(pinned) != Version("0") or installed == pinned


def major_minor(version: str | None) -> str | None:
    """'12.1.105' -> '12.1'."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def pin_of(facts: StackFacts, name: str) -> str | None:
    """The pin of `name` (a PEP 503 name) in requirements/constraints.txt; None when it was not found."""
    return facts.pins.get(name)


def pin_spec(facts: StackFacts, name: str) -> str:
    """`name==pin` for a fix command, or `name -c requirements/constraints.txt` when the pin is unknown."""
    pin = pin_of(facts, name)
    return f"{name}=={pin}" if pin else f"{name} -c requirements/constraints.txt"


def mmcv_rebuild_fix(facts: StackFacts, torch_cuda: str | None = None) -> str:
    """The one command that (re)builds mmcv with compiled ops against the installed torch."""
    version = pin_spec(facts, "mmcv")
    if torch_cuda:
        tag = "cu" + (major_minor(torch_cuda) or "128").replace(".", "")  # setup.sh's TORCH_CUDA form
        # A separate wheel cache: setup.sh would otherwise reuse a cached CPU-only wheel whose ops still run.
        return (f"pip uninstall -y mmcv mmcv-lite && WHEEL_CACHE=.cache/wheels-{tag} "
                f"make setup TORCH_CUDA={tag}  (builds {version} with MMCV_WITH_OPS=1 FORCE_CUDA=1)")
    return (f"pip uninstall -y mmcv mmcv-lite && make setup  (builds the full {version} with ops: "
            f"MMCV_WITH_OPS=1 MAX_JOBS=2 pip install --no-build-isolation {version})")


def _error(component: str, what: str, fix: str = "") -> list[Finding]:
    return [Finding("error", component, what, fix)]


def _warn(component: str, what: str, fix: str = "") -> list[Finding]:
    return [Finding("warn", component, what, fix)]


def check_python(facts: StackFacts) -> list[Finding]:
    """Python 3.11 is what the venv, the cp311 mmcv wheel cache and CI use."""
    release = version_key(facts.python_version).release
    if release[:2] == (3, 11):
        return []
    report = _error if release[:2] < (3, 10) else _warn  # torch 2.13 has no wheel below 3.10: cannot work
    return report("python", f"Python {facts.python_version}: codetr-serve is pinned to 3.11 (cp311 mmcv "
                  "wheels, CI)", "rm -rf .venv && PYTHON=python3.11 make setup")


def check_torch(facts: StackFacts) -> list[Finding]:
    """torch importable, and able to use the GPU the machine has."""
    version, gpu = facts.torch_version, facts.driver_gpu
    if version is None:
        return _error("torch", f"torch is not importable: {facts.errors.get('torch', 'not installed')}",
                      "make setup  (CPU), or make setup TORCH_CUDA=cu130  (NVIDIA GPU)")
    if gpu and facts.torch_cuda is None:
        return _warn("torch", f"torch {version} is a CPU build but the machine has a GPU ({gpu}): inference "
                     "will run on CPU", "make setup TORCH_CUDA=cu130  (PyPI's CUDA 13.0 build; cu126/cu128 "
                     "from PyTorch's index for older drivers)")
    if gpu and not facts.cuda_available:
        return _warn("torch", f"torch is built with CUDA {facts.torch_cuda} but cannot use {gpu} (driver "
                     "older than that CUDA?)", "update the NVIDIA driver, or use an older TORCH_CUDA")
    if facts.cuda_available and not _arch_supported(facts.cuda_capability, facts.torch_arch_list):
        return _error("torch", f"torch {version} has no kernels for {facts.cuda_device} (sm "
                      f"{facts.cuda_capability}; built for {' '.join(facts.torch_arch_list)}): 'no kernel "
                      "image is available'", "make setup TORCH_CUDA=<newer cuXYZ>")
    return []


def gpu_capability(facts: StackFacts) -> str | None:
    """The visible GPU's compute capability: torch's view, else the driver's (a GPU torch cannot use)."""
    return facts.cuda_capability or facts.driver_capability


def check_gpu_coverage(facts: StackFacts) -> list[Finding]:
    """mmcv's CUDA kernels must include code for the GPU; with no GPU visible, say what they cover."""
    if not facts.mmcv_cuda or not facts.mmcv_arch_list:
        return []
    capability, archs = gpu_capability(facts), " ".join(facts.mmcv_arch_list)
    if capability is None:
        return [Finding("ok", "gpu", f"no GPU visible; mmcv's CUDA kernels cover {archs}, torch's "
                        f"{' '.join(facts.torch_arch_list) or 'unknown'} (sm_XY: GPUs of compute capability "
                        "X.Y..X.9; compute_XY: PTX, JIT-compiled for X.Y and newer)")]
    if _arch_supported(capability, facts.mmcv_arch_list):
        return []
    name = facts.cuda_device or facts.driver_gpu
    return _error("gpu", f"this GPU ({name}, compute capability {capability}) is not covered by mmcv's CUDA "
                  f"kernels (built for {archs}): its ops fail with 'no kernel image is available'",
                  f"TORCH_CUDA_ARCH_LIST={capability} {mmcv_rebuild_fix(facts, facts.torch_cuda)}")


def _arch_supported(capability: str | None, arch_list: tuple[str, ...]) -> bool:
    """SASS sm_Xy runs on X.z for z >= y (same major); PTX compute_XY is JIT-compiled for any newer GPU."""
    if not capability or not arch_list:  # nothing to compare: do not guess
        return True
    major, minor = (int(part) for part in capability.split(".")[:2])
    archs = [(kind, int(num[:-1]), int(num[-1])) for kind, _, num in (a.partition("_") for a in arch_list)
             if num.isdigit() and len(num) >= 2]
    return any((kind == "sm" and arch_major == major and arch_minor <= minor)
               or (kind == "compute" and (arch_major, arch_minor) <= (major, minor))
               for kind, arch_major, arch_minor in archs)


def check_mmcv_ops(facts: StackFacts) -> list[Finding]:
    """mmcv present, the full build (not mmcv-lite), and its compiled ops import and run."""
    fix, version = mmcv_rebuild_fix(facts), facts.mmcv_version
    if version is None:
        return _error("mmcv", f"mmcv is not importable: {facts.errors.get('mmcv', 'not installed')}", fix)
    if facts.mmcv_dist == "mmcv-lite":
        return _error("mmcv ops", f"mmcv-lite {version} is installed: it has no compiled ops (nms, "
                      "deformable attention) that Co-DETR needs", fix)
    if facts.mmcv_ops_import_error:
        return _error("mmcv ops", f"mmcv {version} has no usable compiled ops (import mmcv._ext: "
                      f"{facts.mmcv_ops_import_error})", fix)
    if not facts.mmcv_ops_ok:
        why = facts.mmcv_ops_run_error or facts.errors.get("mmcv", "the probe did not run")
        return _error("mmcv ops", f"mmcv's compiled ops import but nms does not run on CPU: {why}", fix)
    return []


def check_mmcv_cuda(facts: StackFacts) -> list[Finding]:
    """mmcv's ops must be compiled for the CUDA torch uses, and have GPU kernels when a GPU is in use."""
    if not facts.mmcv_ops_ok:
        return []  # check_mmcv_ops already reports it
    fix = mmcv_rebuild_fix(facts, facts.torch_cuda)
    torch_cu, mmcv_cu = major_minor(facts.torch_cuda), major_minor(facts.mmcv_cuda)
    if torch_cu and mmcv_cu and torch_cu != mmcv_cu:
        return _error("mmcv ops", f"torch is built with CUDA {facts.torch_cuda} but mmcv's ops were "
                      f"compiled for CUDA {facts.mmcv_cuda}", fix)
    if facts.cuda_available and not mmcv_cu:
        return _error("mmcv ops", f"mmcv's ops are CPU-only while {facts.cuda_device} is in use: GPU ops "
                      "fail with 'not compiled with GPU support'", fix)
    if facts.mmcv_gpu_run_error:
        return _error("mmcv ops", f"mmcv nms fails on {facts.cuda_device}: {facts.mmcv_gpu_run_error}",
                      f"TORCH_CUDA_ARCH_LIST={facts.cuda_capability} {fix}")
    if mmcv_cu and not torch_cu:
        return _warn("mmcv ops", f"mmcv's ops were compiled for CUDA {facts.mmcv_cuda} but torch is a "
                     "CPU build", mmcv_rebuild_fix(facts))
    return []


def check_cpu_msda(facts: StackFacts) -> list[Finding]:
    """CPU workers want our compiled deformable attention op: mmcv's CPU fallback is ~70 % of a forward."""
    fix = "python -m codetr_serve.tools.build_ops  (part of make setup; needs a C++ compiler)"
    if facts.cpu_msda_path == "fallback" and not facts.cuda_available:
        return _warn("cpu msda", f"CPU deformable attention runs on mmcv's pure-PyTorch fallback "
                     f"({facts.cpu_msda_detail}): CPU forwards are several times slower (docs/tuning.md, "
                     "CPU speed)", fix)
    if facts.cpu_msda_path == "op" and facts.cpu_msda_stale:
        return _warn("cpu msda", f"the compiled op is older than its source: {facts.cpu_msda_detail}", fix)
    return []


def check_mmdet(facts: StackFacts) -> list[Finding]:
    """mmdet present, and mmcv / mmengine inside the windows mmdet's __init__ asserts."""
    if facts.mmdet_version is None:
        return _error("mmdet", "mmdet is not installed", "make setup")
    findings = [*_window_finding(facts, "mmcv", facts.mmcv_version, facts.mmdet_mmcv_window),
                *_window_finding(facts, "mmengine", facts.mmengine_version, facts.mmdet_mmengine_window)]
    if facts.mmdet_import_error and not findings:
        findings += _error("mmdet", f"import mmdet fails: {facts.mmdet_import_error}", "make setup")
    return findings


def _window_finding(facts: StackFacts, package: str, installed: str | None,
                    window: tuple[str, str] | None) -> list[Finding]:
    """An error when `installed` is outside mmdet's [min, max) window for `package`."""
    if installed is None or window is None:
        return []
    low, high = window
    if version_key(low) <= version_key(installed) < version_key(high):
        return []
    wanted = pin_of(facts, package)
    fix = mmcv_rebuild_fix(facts) if package == "mmcv" else f"pip install '{package}=={wanted or low}'"
    return _error(package, f"mmdet {facts.mmdet_version} requires {package}>={low},<{high} but {package} "
                  f"{installed} is installed (import mmdet fails its assert)", fix)


def check_java(facts: StackFacts) -> list[Finding]:
    """TorchServe 0.12 starts its frontend with $JAVA_HOME/bin/java, else `java` on PATH: Java >= 17."""
    install = "apt-get install openjdk-17-jre-headless"
    if facts.java_path is None:
        where = f"JAVA_HOME={facts.java_home} has no bin/java" if facts.java_home else "no java on PATH"
        return _error("java", f"Java not found ({where}): TorchServe 0.12 needs Java >= {MIN_JAVA}",
                      f"{install}  (or set JAVA_HOME to a Java >= {MIN_JAVA})")
    if facts.java_major is None:
        why = facts.errors.get("java", facts.java_version or "no output")
        return _warn("java", f"could not read the version of {facts.java_path}: {why}", install)
    if facts.java_major < MIN_JAVA:
        return _error("java", f"Java {facts.java_major} at {facts.java_path}: TorchServe 0.12 needs Java >= "
                      f"{MIN_JAVA}", f"{install}, then point JAVA_HOME (or PATH) at it")
    return []


def check_numpy_opencv(facts: StackFacts) -> list[Finding]:
    """numpy of the pinned major (the compiled wheels of this stack are built against it), importable cv2."""
    findings: list[Finding] = []
    pinned = pin_of(facts, "numpy")
    if facts.numpy_version is None:
        findings += _error("numpy", "numpy is not installed", f"pip install '{pin_spec(facts, 'numpy')}'")
    elif pinned and version_key(facts.numpy_version).major != version_key(pinned).major:
        findings += _error("numpy", f"numpy {facts.numpy_version}: this stack is pinned to {pinned}; mmcv's "
                           f"ops, mmdet and opencv wheels here are built for numpy "
                           f"{version_key(pinned).major}.x", f"pip install 'numpy=={pinned}'")
    if facts.opencv_version is None or facts.opencv_import_error:
        fix = f"pip install '{pin_spec(facts, 'opencv-python')}'"
        findings += _error("opencv", f"cv2 is not importable: {facts.opencv_import_error or 'not installed'}",
                           fix)
    return findings


def check_installed(facts: StackFacts) -> list[Finding]:
    """Packages the checks above only need to be present: TorchServe, the .mar archiver, mmengine."""
    installed = {"torchserve": facts.torchserve_version, "torch-model-archiver": facts.archiver_version,
                 "mmengine": facts.mmengine_version}
    return [Finding("error", name, f"{name} is not installed", f"pip install '{pin_spec(facts, name)}'")
            for name, version in installed.items() if version is None]


def check_checkpoint_loading(facts: StackFacts) -> list[Finding]:
    """torch >= 2.6 refuses pickled checkpoints by default: tell users how codetr-serve handles that."""
    version = facts.torch_version
    if version is None or version_key(version) < version_key(WEIGHTS_ONLY_DEFAULT_SINCE):
        return []
    return [Finding("ok", "torch", f"torch {version} loads with weights_only=True by default, so mmengine's "
                    "load_checkpoint rejects official .pth files; codetr-serve converts them to safetensors "
                    "(archive.sh) or reads them with an allowlist (codetr_serve/convert/checkpoint.py), "
                    "never weights_only=False")]


def check_pins(facts: StackFacts) -> list[Finding]:
    """Installed versions that differ from requirements/constraints.txt (local tags like +cu128 ignored)."""
    findings: list[Finding] = []
    missing = [name for name in sorted(facts.pins)
               if facts.installed.get(name) is None and name not in facts.optional_pins]
    for name, pinned in sorted(facts.pins.items()):
        installed = facts.installed.get(name)
        if installed is not None and not same_version(installed, pinned):
            findings += _warn(name if name in COMPONENTS else "pins", f"{name} {installed} differs from the "
                              f"pin {pinned}", f"pip install -c {facts.constraints_path} '{name}=={pinned}'")
    if missing:
        findings += _warn("pins", f"pinned but not installed: {', '.join(missing)}", "make setup")
    return findings


COMPONENTS = ("python", "torch", "gpu", "mmcv", "mmcv ops", "cpu msda", "mmdet", "mmengine", "numpy",
              "opencv", "torchserve", "torch-model-archiver", "java", "pins")
ALL_CHECKS: tuple[Check, ...] = (check_python, check_torch, check_mmcv_ops, check_mmcv_cuda,
                                 check_gpu_coverage, check_cpu_msda, check_mmdet, check_java,
                                 check_numpy_opencv, check_installed, check_checkpoint_loading, check_pins)


def run_checks(facts: StackFacts, checks: tuple[Check, ...] = ALL_CHECKS) -> list[Finding]:
    """Findings, errors first; a component with an error loses its warnings (the error's fix covers them)."""
    findings: list[Finding] = []
    for check in checks:
        try:
            findings.extend(check(facts))
        except Exception as exc:  # a bug in one check must not hide the rest of the diagnosis
            findings += _warn("doctor", f"{check.__name__} crashed: {exc!r}")
    errored = {finding.component for finding in findings if finding.severity == "error"}
    kept = [finding for finding in findings if finding.severity != "warn" or finding.component not in errored]
    return sorted(kept, key=lambda finding: -SEVERITY_RANK[finding.severity])
