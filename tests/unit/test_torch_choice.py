"""`make setup`'s torch choice (codetr_serve/tools/torch_choice.py): which build, from where."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from codetr_serve.tools.torch_choice import PYTORCH_INDEX, choose_torch, pypi_flavour, wanted_flavour

REPO = Path(__file__).resolve().parents[2]


def never(*_args: object) -> None:
    raise AssertionError("this probe must not run for this choice")


def choose(requested: str, gpu: bool = False, pypi: str = "cu130", local: str | None = "",
           reachable: bool = False):
    """choose_torch with fixed probe answers; `local` None/"" means pip would take PyPI's wheel."""
    return choose_torch(requested, gpu, pypi, lambda: local, lambda: reachable)


def test_pypi_ships_cuda_only_for_linux_x86_64() -> None:
    assert pypi_flavour("Linux", "x86_64") == "cu130"
    assert pypi_flavour("Darwin", "arm64") == "cpu" and pypi_flavour("Windows", "AMD64") == "cpu"


@pytest.mark.parametrize(("requested", "gpu", "want"), [
    ("", False, "cpu"), ("", True, "cu130"), ("cpu", True, "cpu"), ("CU128", False, "cu128")])
def test_empty_torch_cuda_follows_the_gpu(requested: str, gpu: bool, want: str) -> None:
    assert wanted_flavour(requested, gpu, "cu130") == want


def test_a_malformed_flavour_is_refused() -> None:
    with pytest.raises(ValueError, match="look like cu130"):
        wanted_flavour("cuda12", False, "cu130")


def test_cpu_default_uses_a_local_cpu_wheel_pip_already_resolves_to() -> None:
    choice = choose_torch("", False, "cu130", lambda: "cpu", never)
    assert (choice.torch_source, choice.mmcv_flavour, choice.torch_exact) == ("pip", "cpu", False)


def test_cpu_default_takes_pytorchs_cpu_index_when_pip_would_get_the_cuda_build() -> None:
    choice = choose("", local="", reachable=True)
    assert choice.torch_source == "index" and choice.torch_index == PYTORCH_INDEX + "cpu"
    assert choice.mmcv_flavour == "cpu" and not choice.torch_note


def test_cpu_default_without_any_cpu_build_says_it_installs_the_cuda_build() -> None:
    choice = choose("cpu", local=None, reachable=False)
    assert choice.torch_source == "pypi" and choice.mmcv_flavour == "cpu"
    assert "CUDA 13.0 build" in choice.torch_note and "PIP_FIND_LINKS" in choice.torch_note


def test_off_linux_x86_pypis_build_is_the_cpu_build() -> None:
    choice = choose_torch("", False, "cpu", never, never)
    assert choice.torch_source == "pip" and choice.mmcv_flavour == "cpu"


def test_cu130_is_pypis_own_build_exactly() -> None:
    choice = choose_torch("cu130", False, "cu130", never, never)
    assert (choice.torch_source, choice.torch_exact, choice.mmcv_flavour) == ("pypi", True, "cu130")
    assert choice == choose_torch("", True, "cu130", never, never)  # a GPU and no TORCH_CUDA


def test_other_cuda_flavours_come_from_pytorchs_index() -> None:
    choice = choose_torch("cu128", False, "cu130", never, never)
    assert choice.torch_source == "index" and choice.torch_index == PYTORCH_INDEX + "cu128"
    assert choice.mmcv_flavour == "cu128"


def test_the_cli_prints_shell_assignments_setup_sh_can_eval(tmp_path: Path) -> None:
    # The real script as setup.sh runs it: by path, with an explicit flavour (no probe needs the network).
    proc = subprocess.run([sys.executable, str(REPO / "codetr_serve/tools/torch_choice.py"), sys.executable,
                           str(REPO / "requirements/constraints.txt")], capture_output=True, text=True,
                          env={**os.environ, "TORCH_CUDA": "cu130"}, check=True, timeout=60)
    assigned = dict(shlex.split(line)[0].split("=", 1) for line in proc.stdout.splitlines())
    assert assigned == {"torch_source": "pypi", "mmcv_flavour": "cu130", "torch_index": "",
                        "torch_exact": "1", "torch_note": ""}
    bad = subprocess.run([sys.executable, str(REPO / "codetr_serve/tools/torch_choice.py"), sys.executable,
                          str(REPO / "requirements/constraints.txt")], capture_output=True, text=True,
                         env={**os.environ, "TORCH_CUDA": "cuda12"}, check=False, timeout=60)
    shell = subprocess.run(["bash", "-c", bad.stdout], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and shell.returncode == 2 and "look like cu130" in shell.stderr
