"""The serving core must stay framework-free: importing any codetr_serve module must not import TorchServe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_LEAK_CHECK = "leaked = sorted(n for n in sys.modules if n == 'ts' or n.startswith('ts.'))"

# Runs in a fresh interpreter so modules other tests imported cannot hide (or cause) a `ts` import.
_PROBE = textwrap.dedent(
    f"""
    import importlib, json, pkgutil, sys
    import codetr_serve
    imported, failed = [], {{}}
    for info in pkgutil.walk_packages(codetr_serve.__path__, prefix="codetr_serve."):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as exc:  # reported, and fails the test
            failed[info.name] = repr(exc)
    {_LEAK_CHECK}
    print(json.dumps({{"imported": imported, "failed": failed, "leaked": leaked}}))
    """
)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_no_codetr_serve_module_imports_torchserve() -> None:
    completed = _run(_PROBE)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, "every module must import cleanly"
    assert report["leaked"] == [], f"TorchServe (`ts`) got imported: {report['leaked']}"
    for expected in (
        "codetr_serve.errors",
        "codetr_serve.codec",
        "codetr_serve.decode",
        "codetr_serve.detections",
        "codetr_serve.schemas",
    ):
        assert expected in report["imported"]


def test_leak_check_sees_a_torchserve_submodule() -> None:
    """Guard against a vacuous test: the same check reports `ts` modules once something imported them."""
    fake_import = "import sys, types; sys.modules['ts.torch_handler'] = types.ModuleType('ts.torch_handler')"
    completed = _run(f"{fake_import}\n{_LEAK_CHECK}\nprint(leaked)")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "['ts.torch_handler']"
