"""runtime.allocator: with the thresholds raised, memory freed by a forward stays in the worker."""

from __future__ import annotations

import subprocess
import sys

from codetr_serve.runtime.settings import build_settings

# Allocate and fill 256 MiB, free it, and report how much resident memory the free gave back (MiB).
PROBE = """
import os, sys
from codetr_serve.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
block = b"x" * (256 << 20)
before = rss()
del block
print(before - rss())
"""


def returned_mib(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


def test_freed_memory_stays_in_the_process_only_when_asked() -> None:
    assert returned_mib("default") > 200  # glibc's default: the block was mmapped, free() unmaps it
    assert returned_mib("keep") < 16  # raised thresholds: it stays on the heap for the next forward


def test_setting_defaults_to_on_and_can_be_turned_off() -> None:
    assert build_settings({}, model_dir="/m", device="cpu").keep_freed_memory is True
    off = build_settings({"keep_freed_memory": False}, model_dir="/m", device="cpu")
    assert off.keep_freed_memory is False
