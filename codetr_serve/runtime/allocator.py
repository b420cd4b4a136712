"""Keep freed CPU memory inside the worker instead of handing it back to the kernel after every forward.

glibc serves large blocks with mmap and trims the heap once enough is free, adapting both thresholds to the
sizes a process has freed before. A worker that runs one image at a time keeps returning its activation
buffers and faulting them in again on the next forward. Raising both thresholds trades some resident memory
for faster CPU forwards; `python -m bench.allocator` measures it and docs/tuning.md (rule 7) has the figures.
On a GPU worker only the CPU-side buffers (decode, resize) are affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # <malloc.h>: keep this much free memory at the top of the heap before trimming
M_MMAP_THRESHOLD = -3  # <malloc.h>: blocks at least this large get their own mmap (and munmap on free)
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
