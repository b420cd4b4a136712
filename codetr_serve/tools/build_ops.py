"""Compile codetr_serve's CPU ops ahead of time: `python -m codetr_serve.tools.build_ops`.

Run it at `make setup` and in the image's build stage, never in a worker: the build takes about a minute,
needs a C++ compiler, and torch's JIT loader leaves a lock behind when a build is killed, which makes every
later load wait forever. This tool always builds in a fresh scratch folder and moves the finished library
into place atomically, so an interrupted build leaves the previous library (or none) and no lock.

The library lands in `codetr_serve.ops.ops_dir()`: $CODETR_OPS_DIR, else <sys.prefix>/lib/codetr_serve_ops,
i.e. inside the virtualenv, so a venv copied into an image carries it. No -march=native: the kernel has
baseline (SSE2), AVX2+FMA and AVX-512 variants and picks the widest one the CPU supports at run time.

Exit status: 0 built (or already up to date), 1 build or check failed (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-DNDEBUG"]
LD_FLAGS = ["-fopenmp"]


def _fail(message: str) -> int:
    print(f"build_ops: FAILED: {message}", file=sys.stderr)
    return 1


def _up_to_date(out_dir: Path) -> bool:
    import torch

    from codetr_serve.ops import msda

    info = msda._read_build_info(out_dir)
    return ((out_dir / msda.LIBRARY_FILE).is_file() and info.get("torch") == torch.__version__
            and info.get("source_sha256") == msda.source_digest() and info.get("cxx_flags") == CXX_FLAGS)


def build(out_dir: Path, verbose: bool = False) -> dict:
    """Compile, self-check and install the library into `out_dir`; returns the build info written."""
    import torch
    from torch.utils import cpp_extension

    from codetr_serve.ops import msda

    out_dir.mkdir(parents=True, exist_ok=True)
    # torch runs `ninja` from PATH: the one pip put next to this interpreter counts even when the
    # virtualenv is not activated (`.venv/bin/python -m codetr_serve.tools.build_ops`).
    os.environ["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    for stale in out_dir.glob(".build-*"):  # left by killed builds; a live one is minutes old at most
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    start = time.perf_counter()
    try:
        # Copies of the flag lists: cpp_extension appends torch's own link flags to the list it gets.
        cpp_extension.load(name=msda.LIBRARY_NAME, sources=[str(msda.SOURCE_FILE)],
                           extra_cflags=list(CXX_FLAGS), extra_ldflags=list(LD_FLAGS),
                           build_directory=str(scratch), is_python_module=False, verbose=verbose)
        built = scratch / msda.LIBRARY_FILE
        if not built.is_file():
            raise RuntimeError(f"the compiler produced no {built.name} in {scratch}")
        seconds = time.perf_counter() - start
        # The library is now registered in this process: check it before installing it.
        if not torch.ops.codetr_ops.msda_openmp():
            raise RuntimeError("the library was compiled without OpenMP: at::parallel_for would run on "
                               "one thread (is -fopenmp supported by this compiler?)")
        msda._self_check()
        info = {
            "torch": torch.__version__,
            "source_sha256": msda.source_digest(),
            "cxx_flags": CXX_FLAGS,
            "ld_flags": LD_FLAGS,
            "compiler": os.environ.get("CXX", "c++"),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "isas_on_build_host": list(torch.ops.codetr_ops.msda_isas()),
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        staged = out_dir / (msda.LIBRARY_FILE + ".new")
        shutil.copy2(built, staged)
        os.replace(staged, out_dir / msda.LIBRARY_FILE)
        info_staged = out_dir / (msda.BUILD_INFO_FILE + ".new")
        info_staged.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(info_staged, out_dir / msda.BUILD_INFO_FILE)
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check(out_dir: Path) -> int:
    """Load the installed library in this process and run its self-check."""
    os.environ["CODETR_OPS_DIR"] = str(out_dir)
    from codetr_serve.ops import msda

    status = msda.load_op()
    if not status.available:
        return _fail(status.describe())
    print(f"build_ops: OK: {status.describe()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from codetr_serve.ops import msda

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where to install the library (default: {msda.ops_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the library is up to date")
    parser.add_argument("--check", action="store_true", help="only load and self-check the installed library")
    parser.add_argument("--verbose", action="store_true", help="show the compiler command lines")
    args = parser.parse_args(argv)
    out_dir = (args.out_dir or msda.ops_dir()).resolve()

    if args.check:
        return check(out_dir)
    if not args.force and _up_to_date(out_dir):
        print(f"build_ops: {out_dir / msda.LIBRARY_FILE} is up to date (torch and source unchanged; "
              "--force rebuilds)")
        return 0
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return _fail("no C++ compiler found (install g++, or set CXX); the server still runs without the op, "
                     "on mmcv's slower pure-PyTorch deformable attention")
    print(f"build_ops: compiling {msda.SOURCE_FILE.name} ({' '.join(CXX_FLAGS)}) into {out_dir} ...",
          flush=True)
    try:
        info = build(out_dir, verbose=args.verbose)
    except Exception as error:  # noqa: BLE001 - one clear line, then the exit status says it all
        return _fail(f"{type(error).__name__}: {error}".strip()[:4000])
    print(f"build_ops: built {out_dir / msda.LIBRARY_FILE} in {info['build_seconds']:.1f} s "
          f"(kernels on this host: {', '.join(info['isas_on_build_host'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
