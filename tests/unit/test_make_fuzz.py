"""`make fuzz` on a fresh clone builds the venv first, like every other target that runs its Python."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO


def test_make_fuzz_builds_the_venv_before_using_it(tmp_path):
    # A dry run against a venv that does not exist: the setup script must come before any use of it.
    # --no-print-directory: under `make test` this make is a sub-make and would print "Entering directory".
    dry = subprocess.run(["make", "--no-print-directory", "-n", "fuzz", f"VENV={tmp_path / 'fresh'}"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    assert dry[0] == "bash scripts/setup.sh"
    assert any("tests.fuzz.target" in line for line in dry[1:])
