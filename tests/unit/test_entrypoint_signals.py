"""docker/entrypoint.sh when SIGTERM comes early: between installing its trap and knowing the launcher's pid.

The handler runs in exactly that state: the script's own lines from `jvm_pid()` to the last `trap` are
sourced under the script's `set -uo pipefail`, then the handler is called as the trap would call it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"


def handler_section() -> str:
    text = ENTRYPOINT.read_text()
    found = re.search(r"^jvm_pid\(\) \{.*?^trap 'on_signal SIGINT' INT$", text, re.M | re.S)
    assert found, "entrypoint.sh no longer has jvm_pid() ... trap INT"
    return found.group(0)


def run_in_window(tmp_path: Path, before_signal: str) -> subprocess.CompletedProcess:
    script = tmp_path / "window.sh"
    script.write_text("set -uo pipefail\n"
                      "say() { printf 'codetr-entrypoint: %s\\n' \"$*\" >&2; }\n"
                      f"pid_file={tmp_path}/.model_server.pid\nstop_requested=0\n"
                      f"{handler_section()}\n{before_signal}\n"
                      "on_signal SIGTERM\necho \"handled stop_requested=$stop_requested\"\n")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)


def test_sigterm_before_torchserve_started_ends_cleanly(tmp_path: Path) -> None:
    out = run_in_window(tmp_path, "")
    assert out.returncode == 0, out.stderr  # the old handler died here: "launcher: unbound variable", 127
    assert "handled stop_requested=1" in out.stdout
    assert "before TorchServe started" in out.stderr


def test_sigterm_after_the_fork_stops_the_launcher(tmp_path: Path) -> None:
    # `torchserve &` has forked (so $! is set) but `launcher=$!` has not run yet.
    out = run_in_window(tmp_path, f"sleep 60 &\necho $! > {tmp_path}/child")
    assert out.returncode == 0, out.stderr
    child = int((tmp_path / "child").read_text())
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout
    assert not state.strip() or state.strip().startswith("Z"), f"launcher {child} still runs: {state}"
    assert "SIGTERM received: stopping TorchServe" in out.stderr


def test_the_script_does_not_start_torchserve_once_a_stop_was_requested() -> None:
    text = ENTRYPOINT.read_text()
    start = text.index('torchserve "${flags[@]}"')
    assert re.search(r'\[ "\$stop_requested" = 1 \] && exit 0\n$', text[:start])
