"""runtime.allocator: with the thresholds raised, memory freed by a forward stays in the worker."""

from __future__ import annotations

import subprocess
import sys

from codetr_serve.runtime.allocator import M_PERTURB, FreshMemoryFill
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


# Fill a 64 KiB block with 0xAB, free it, allocate the same size and count the 0xAB bytes it still holds.
FILL_PROBE = """
import ctypes, ctypes.util, sys
from codetr_serve.runtime.allocator import FRESH_MEMORY_FILL, keep_freed_memory
keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 1 << 16
def stale_bytes():
    first = libc.malloc(size)
    ctypes.memset(first, 0xAB, size)
    libc.free(first)
    second = libc.malloc(size)
    held = ctypes.string_at(second, size).count(0xAB)
    libc.free(second)
    return held
if sys.argv[1] == "fill":
    with FRESH_MEMORY_FILL.active() as filled:
        assert filled
        print(stale_bytes())
else:
    print(stale_bytes())
"""


def stale_bytes(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FILL_PROBE, mode], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_fresh_memory_fill_leaves_no_earlier_bytes_in_a_new_block() -> None:
    assert stale_bytes("plain") > 60_000  # glibc hands the freed block back as it was
    assert stale_bytes("fill") == 0


def test_fresh_memory_fill_is_on_while_any_decode_thread_uses_it() -> None:
    calls: list[tuple[int, int]] = []
    fill = FreshMemoryFill()
    fill._mallopt = lambda option, value: calls.append((option, value)) or 1
    with fill.active(), fill.active():
        assert calls == [(M_PERTURB, 0xFF)]
    assert calls == [(M_PERTURB, 0xFF), (M_PERTURB, 0)]


def test_without_glibc_the_fill_reports_itself_unavailable() -> None:
    fill = FreshMemoryFill()
    fill._mallopt = None
    with fill.active() as filled:
        assert filled is False
