"""Import boundaries: the worker runtime never imports TorchServe, the tools or archive-time conversion.

Each probe runs in a fresh interpreter so modules other tests imported cannot hide (or cause) an import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from codetr_serve.tools.archive import PACKAGE, package_files

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_WORKER = ("ts", "codetr_serve.tools", "codetr_serve.convert")

_LEAK_CHECK = textwrap.dedent(
    """
    def leaked(prefixes):
        return sorted(n for n in sys.modules if any(n == p or n.startswith(p + '.') for p in prefixes))
    """
)

# Imports every module under the given packages, then reports which forbidden modules got imported.
_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    {leak_check}
    imported, failed = [], {{}}
    for package in {packages!r}:
        module = importlib.import_module(package)
        imported.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            try:
                importlib.import_module(info.name)
                imported.append(info.name)
            except Exception as exc:  # reported, and fails the test
                failed[info.name] = repr(exc)
    origin = importlib.import_module("codetr_serve").__file__
    print(json.dumps({{"imported": imported, "failed": failed, "leaked": leaked({forbidden!r}),
                      "origin": origin}}))
    """
)


def _probe(packages: list[str], forbidden: tuple[str, ...], cwd: Path) -> dict:
    script = _PROBE.format(leak_check=_LEAK_CHECK, packages=packages, forbidden=forbidden)
    completed = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                               timeout=300, check=False, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin"})
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_worker_side_imports_neither_torchserve_nor_tools() -> None:
    report = _probe(["codetr_serve.runtime", "codetr_serve.models"], FORBIDDEN_IN_WORKER, REPO)
    assert report["failed"] == {}, "every worker module must import cleanly"
    assert report["leaked"] == [], f"the worker side imported {report['leaked']}"
    for module in ("core", "codec", "errors"):
        assert f"codetr_serve.runtime.{module}" in report["imported"]


def test_every_module_imports_without_torchserve() -> None:
    report = _probe(["codetr_serve"], ("ts",), REPO)
    assert report["failed"] == {}
    assert report["leaked"] == []
    assert "codetr_serve.tools.doctor" in report["imported"]


def test_packed_tree_works_with_tools_removed(tmp_path: Path) -> None:
    """Exactly what archive.sh packs, alone on sys.path: the worker side imports and builds its core."""
    for path in package_files():
        target = tmp_path / "codetr_serve" / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    packed = {p.relative_to(tmp_path).parts[1] for p in tmp_path.rglob("*.py")}
    assert "tools" not in packed and "convert" not in packed and {"runtime", "models"} <= packed
    report = _probe(["codetr_serve.runtime", "codetr_serve.models"], FORBIDDEN_IN_WORKER, tmp_path)
    assert report["failed"] == {}
    assert report["leaked"] == []
    assert Path(report["origin"]).is_relative_to(tmp_path), "the packed copy, not the source tree, was tested"


def test_leak_check_sees_a_forbidden_submodule() -> None:
    """Guard against a vacuous test: the same check reports modules once something imported them."""
    fake = "import sys, types; sys.modules['ts.torch_handler'] = types.ModuleType('ts.torch_handler')"
    script = f"import sys\n{_LEAK_CHECK}\n{fake}\nprint(leaked(('ts', 'codetr_serve.tools')))"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "['ts.torch_handler']"
