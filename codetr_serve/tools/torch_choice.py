"""Which torch build `make setup` installs, and from where: the choice behind `TORCH_CUDA`.

scripts/setup.sh runs this file by path with the new venv's interpreter (standard library only, nothing of
the package is imported) and `eval`s its output: shell assignments `torch_source`, `torch_index`,
`torch_exact`, `mmcv_flavour` and `torch_note`.

Why a choice at all: `torch==2.13.0` from PyPI is, on Linux x86_64, the CUDA 13.0 build (its CUDA
libraries come as `nvidia-*` wheels, ~4.7 GB installed). A CPU build comes only from PyTorch's CPU index or
a local `+cpu` wheel that pip's own configuration points at (find-links). So:

  TORCH_CUDA=            CPU build when no NVIDIA GPU is visible, PyPI's CUDA build when one is
  TORCH_CUDA=cpu         CPU build: a `+cpu` wheel pip already resolves to, else PyTorch's CPU index, else
                         (neither reachable) PyPI's CUDA build, which also runs on the CPU: said loudly
  TORCH_CUDA=cu130       PyPI's own build (the flavour PyPI ships), as `torch===<pin>` so a local `+cpu`
                         wheel of the same version cannot win
  TORCH_CUDA=cu126 ...   PyTorch's index for that flavour (https://download.pytorch.org/whl/<flavour>)
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PYPI_CUDA_FLAVOUR = "cu130"  # what PyPI's torch 2.13.0 wheel for Linux x86_64 is built with
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class TorchChoice:
    """How setup.sh installs torch. `mmcv_flavour` names the mmcv build (and its wheel-cache folder)."""

    torch_source: str  # "pip" (pip's own configuration), "pypi" (PyPI only) or "index" (torch_index)
    mmcv_flavour: str  # "cpu" or a CUDA flavour such as "cu130"
    torch_index: str = ""
    torch_exact: bool = False  # `torch===<pin>`: exactly PyPI's build, never a local `+cpu` wheel of the pin
    torch_note: str = ""


def pypi_flavour(system: str, machine: str) -> str:
    """The build `pip install torch==<pin>` gets from PyPI: CUDA on Linux x86_64 (checked), else CPU."""
    linux_x86_64 = system == "Linux" and machine.lower() in {"x86_64", "amd64"}
    return PYPI_CUDA_FLAVOUR if linux_x86_64 else "cpu"


def wanted_flavour(requested: str, gpu_present: bool, pypi_build: str) -> str:
    """TORCH_CUDA as given, or for an empty one: CPU without a GPU, PyPI's CUDA build with one."""
    requested = requested.strip().lower()
    if requested:
        if requested != "cpu" and not re.fullmatch(r"cu\d{3}", requested):
            raise ValueError(f"TORCH_CUDA must be empty, cpu or look like cu130, not {requested!r}")
        return requested
    return pypi_build if gpu_present and pypi_build != "cpu" else "cpu"


Probe = Callable[[], object]


def choose_torch(requested: str, gpu_present: bool, pypi_build: str, pip_default_local: Probe,
                 cpu_index_reachable: Probe) -> TorchChoice:
    """The install plan. The two callables are probes, called only when the answer depends on them:
    `pip_default_local()` is the local version tag pip's configuration resolves the pin to ("cpu" for a
    `+cpu` wheel, "" for PyPI's, None when unknown); `cpu_index_reachable()` whether PyTorch's CPU index
    answers."""
    want = wanted_flavour(requested, gpu_present, pypi_build)
    if want != "cpu":
        if want == pypi_build:
            return TorchChoice("pypi", want, torch_exact=True)
        return TorchChoice("index", want, torch_index=PYTORCH_INDEX + want)
    if pypi_build == "cpu" or pip_default_local() == "cpu":
        return TorchChoice("pip", "cpu")
    if cpu_index_reachable():
        return TorchChoice("index", "cpu", torch_index=PYTORCH_INDEX + "cpu")
    note = (f"no CPU build of torch is reachable (no local +cpu wheel, {PYTORCH_INDEX}cpu does not answer): "
            f"installing PyPI's torch, the CUDA {pypi_build[2:4]}.{pypi_build[4:]} build (~4.7 GB with its "
            "nvidia-* wheels). It runs on the CPU; mmcv gets CPU ops. For a smaller venv put a "
            "torch-<pin>+cpu wheel in a folder and set PIP_FIND_LINKS to it.")
    return TorchChoice("pypi", "cpu", torch_exact=True, torch_note=note)


# --- probes (not pure: they look at the machine) ----------------------------------------------------------


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU the driver sees: /proc/driver/nvidia/gpus/* or `nvidia-smi -L` listing one."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and any(line.startswith("GPU ") for line in proc.stdout.splitlines())


def pip_resolves_local(python: str, requirement: str, constraints: str) -> str | None:
    """The local tag of the torch wheel pip (with the machine's configuration) would install: a dry run
    that reads metadata only."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
               "--report", str(report), "-c", constraints, requirement]
        try:
            subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S * 3, check=True)
            version = json.loads(report.read_text())["install"][0]["metadata"]["version"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
            return None
    return version.partition("+")[2]


def url_answers(url: str) -> bool:
    """Whether an HTTPS index answers at all within a few seconds."""
    try:
        with urllib.request.urlopen(url, timeout=8):  # noqa: S310 (a fixed https URL)
            return True
    except (OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    """`torch_choice.py PYTHON CONSTRAINTS`: print the plan as shell assignments (or --json)."""
    python, constraints = argv[:2]
    pin = next((line.strip() for line in Path(constraints).read_text().splitlines()
                if line.startswith("torch==")), "torch")
    try:
        choice = choose_torch(os.environ.get("TORCH_CUDA", ""), nvidia_gpu_present(),
                              pypi_flavour(platform.system(), platform.machine()),
                              lambda: pip_resolves_local(python, pin, constraints),
                              lambda: url_answers(PYTORCH_INDEX + "cpu/torch/"))
    except ValueError as exc:
        print(f"echo {shlex.quote(str(exc))} >&2; exit 2")
        return 2
    if "--json" in argv:
        print(json.dumps(asdict(choice)))
        return 0
    for key, value in asdict(choice).items():
        print(f"{key}={shlex.quote(str(int(value)) if isinstance(value, bool) else value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
