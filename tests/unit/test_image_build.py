"""docker/build.sh without building: the tag it builds (and docker/smoke.sh runs), and where it stages a
prebuilt mmcv wheel, which must be where scripts/setup.sh in the builder stage looks for one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "docker" / "build.sh"
WHEEL = "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"


def build_sh(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"VARIANT", "TORCH_CUDA", "IMAGE", "WHEEL_CACHE", "TORCH_WHEEL_DIR", "PIP_CERT",
                          "PIP_FIND_LINKS"}}
    return subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, env={**clean, **env},
                          cwd=REPO)


@pytest.mark.parametrize("env, tag", [
    ({}, "codetr-serve:cpu"),
    ({"VARIANT": "cuda"}, "codetr-serve:cu130"),
    ({"VARIANT": "cuda", "TORCH_CUDA": "cu128"}, "codetr-serve:cu128"),
    ({"VARIANT": "cuda", "IMAGE": "registry.example/codetr:1"}, "registry.example/codetr:1")])
def test_the_tag_follows_the_variant(env, tag):
    out = build_sh("tag", **env)
    assert out.returncode == 0 and out.stdout.strip() == tag


def test_a_wrong_variant_is_refused():
    out = build_sh("tag", VARIANT="gpu")
    assert out.returncode != 0 and "VARIANT must be cpu or cuda" in out.stderr


def test_the_smoke_test_runs_the_image_make_image_built():
    # It used to default to codetr-serve:cpu whatever VARIANT said, so `make image-smoke VARIANT=cuda`
    # tested the CPU image.
    smoke = (REPO / "docker" / "smoke.sh").read_text()
    assert re.search(r"^tag=\$\(bash docker/build.sh tag\)", smoke, re.M)


def builder_wheel_cache() -> tuple[str, str, str]:
    """(context folder, image folder) of the mmcv wheel COPY, and the WHEEL_CACHE setup.sh gets there."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    copy = re.search(r"^COPY (docker/wheels/mmcv/) (\S+)$", dockerfile, re.M)
    cache = re.search(r"WHEEL_CACHE=(\S+)", dockerfile)
    assert copy and cache
    return copy.group(1), copy.group(2), cache.group(1)


@pytest.mark.parametrize("variant, flavour", [("cpu", "cpu"), ("cuda", "cu130")])
def test_a_cached_mmcv_wheel_is_staged_where_the_builder_looks(tmp_path, variant, flavour):
    # setup.sh keeps CUDA builds of mmcv in a subfolder named after the flavour (cache_for_variant), in
    # WHEEL_CACHE on the host and in the builder alike. A CUDA wheel staged flat was never found, so the
    # builder compiled mmcv again.
    cache, stage = tmp_path / "cache", tmp_path / "stage"
    sub = "" if flavour == "cpu" else f"{flavour}/"
    (cache / sub).mkdir(parents=True)
    (cache / sub / WHEEL).write_bytes(b"")
    out = build_sh("stage", VARIANT=variant, WHEEL_CACHE=str(cache), WHEEL_STAGE=str(stage))
    assert out.returncode == 0, out.stderr
    staged = [Path(line) for line in out.stdout.splitlines() if line.startswith(str(stage))]
    assert [p.relative_to(stage).as_posix() for p in staged] == [f"mmcv/{sub}{WHEEL}"]
    context, in_image, wheel_cache = builder_wheel_cache()
    path_in_builder = in_image + staged[0].relative_to(stage / "mmcv").as_posix()
    assert context == "docker/wheels/mmcv/"
    assert path_in_builder == f"{wheel_cache.rstrip('/')}/{sub}{WHEEL}"
    assert not any(stage.rglob("*.whl")), "staged wheels are removed when build.sh ends"


@pytest.mark.parametrize("source", ["TORCH_WHEEL_DIR", "PIP_FIND_LINKS"])
def test_a_local_torch_wheel_of_the_flavour_is_staged(tmp_path, source):
    # `make setup` takes a +cpu torch from pip's find-links; `make image` used to ignore them and, with
    # PyTorch's CPU index out of reach, built a 6.2 GB "cpu" image around PyPI's CUDA torch.
    pin = re.search(r"^torch==(\S+)$", (REPO / "requirements" / "constraints.txt").read_text(), re.M).group(1)
    wheels, stage = tmp_path / "wheels", tmp_path / "stage"
    wheels.mkdir()
    cpu = f"torch-{pin}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    for name in (cpu, f"torch-{pin}+cu128-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.0.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"):
        (wheels / name).write_bytes(b"")
    value = str(wheels) if source == "TORCH_WHEEL_DIR" else f"https://wheels.example.invalid/ file://{wheels}"
    out = build_sh("stage", WHEEL_CACHE=str(tmp_path / "no-cache"), WHEEL_STAGE=str(stage), **{source: value})
    assert out.returncode == 0, out.stderr
    staged = [Path(line).relative_to(stage).as_posix() for line in out.stdout.splitlines()
              if line.startswith(str(stage))]
    assert staged == [f"torch/{cpu}"]


def test_the_mmcv_build_reports_wall_and_cpu_time(tmp_path):
    # scripts/setup.sh's children_cpu_s must run `times` in the calling shell: in a $(...) subshell the
    # count of finished children starts at zero and every compile would report 0 s of CPU.
    setup = (REPO / "scripts" / "setup.sh").read_text()
    helper = re.search(r"^children_cpu_s\(\) \{.*?^\}", setup, re.M | re.S).group(0)
    script = helper + "\nchildren_cpu_s; a=$cpu_s\n" \
        "python3 -c 'import time\nt = time.process_time()\nwhile time.process_time() - t < 1.2: pass'\n" \
        "children_cpu_s; echo $a $cpu_s\n"
    before, after = map(int, subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                            check=True).stdout.split())
    assert before == 0 and after >= 1
    assert "children_cpu_s; cpu_before=$cpu_s" in setup and "$(children_cpu_s)" not in setup


# Built by nvcc from tests/data/fatbin/*.cu (see tests/unit/test_doctor.py): sm_80, sm_90 and compute_90.
FATBIN_LIBRARY = REPO / "tests" / "data" / "fatbin" / "libtwo_sm80_sm90_compute90.so"


@pytest.mark.parametrize("arch_list, missing", [
    ("9.0", ()), ("8.0;9.0+PTX", ()), ("8.0 9.0", ()), ("9.0a", ()),
    ("8.0;8.6;8.9;9.0+PTX", ("sm_86", "sm_89")),  # docker/cuda_archs.txt
    ("8.0+PTX;9.0", ("compute_80",)), ("10.0", ("sm_100",)),
    ("Ampere", ())])  # a name is not expanded: nothing to check
def test_a_cached_mmcv_wheel_must_cover_the_arch_list(arch_list, missing):
    # scripts/setup.sh reused any cached CUDA mmcv wheel whose ops ran: one compiled for 9.0 only would
    # have gone into an image built for (and scheduled by k8s/ onto) A100s and RTX 40s.
    out = subprocess.run([sys.executable, str(REPO / "codetr_serve" / "tools" / "cuda_archs.py"),
                          str(FATBIN_LIBRARY), "--require", arch_list], capture_output=True, text=True)
    assert out.stdout.split() == ["sm_80", "sm_90", "compute_90"]
    assert out.returncode == (1 if missing else 0)
    assert (f"lacks {' '.join(missing)}" in out.stderr) if missing else out.stderr == ""


def test_setup_checks_the_arch_list_before_reusing_mmcv():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    check = re.search(r"^mmcv_ops_work\(\) \{.*?^\}", setup, re.M | re.S).group(0)
    assert "missing_archs(os.environ[\"TORCH_CUDA_ARCH_LIST\"]" in check
    assert setup.index("\nresolve_cuda_archs\n") < setup.index("\nmmcv_ops_work ||")
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert dockerfile.index("COPY codetr_serve/tools/cuda_archs.py") < dockerfile.index("RUNTIME_DEPS_ONLY=1")


def test_mmcv_compiles_with_the_venvs_ninja():
    # pip does not put the venv's bin on PATH (setup.sh runs it by path, and the builder stage sets PATH
    # only later), so torch's BuildExtension found no ninja and compiled mmcv's 136 units one at a time.
    setup = (REPO / "scripts" / "setup.sh").read_text()
    build = re.search(r"^build_mmcv_from_source\(\) \{.*?^\}", setup, re.M | re.S).group(0)
    assert re.search(r'PATH="\$venv/bin:\$PATH" [^\n]*\\\n\s+"\$venv/bin/python" -m pip wheel', build)
    assert re.search(r"pip_install numpy setuptools wheel ninja", setup)


def test_the_pypi_toolkit_gets_the_dev_link_the_linker_needs(tmp_path):
    # NVIDIA's wheels ship libcudart.so.13 only; mmcv's link step (-lcudart) failed after its 136 units had
    # compiled ("cannot find -lcudart") in the first full CUDA image build.
    script = (REPO / "docker" / "cuda-toolkit.sh").read_text()
    helper = re.search(r"^dev_links\(\) \{.*?^\}", script, re.M | re.S).group(0)
    for name in ("libcudart.so.13", "libnvrtc.so.13.0.88", "libcudadevrt.a"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "libnvvm.so").write_bytes(b"")  # already there: left alone
    subprocess.run(["bash", "-c", helper + f'\ndev_links "{tmp_path}"'], check=True)
    assert os.readlink(tmp_path / "libcudart.so") == "libcudart.so.13"
    assert os.readlink(tmp_path / "libnvrtc.so") == "libnvrtc.so.13.0.88"
    assert not (tmp_path / "libnvvm.so").is_symlink() and not (tmp_path / "libcudadevrt.so").exists()
    assert re.search(r'^  dev_links "\$root/lib"$', script, re.M)


def test_the_installed_package_carries_every_source_of_the_cpu_op():
    # package-data listed only ops/csrc/*.cpp: the image's non-editable install lacked msda_kernel.h, so
    # codetr-doctor in the image called the op built from the full sources STALE (its digest covers the
    # headers), and build_ops could not have rebuilt it there.
    import fnmatch
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["codetr_serve"]
    sources = sorted((REPO / "codetr_serve" / "ops" / "csrc").glob("*.[ch]*"))  # what source_digest hashes
    assert sources
    for path in sources:
        relative = path.relative_to(REPO / "codetr_serve").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
