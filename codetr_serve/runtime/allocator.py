"""glibc malloc settings for the worker: keep freed memory (speed) and fill fresh blocks (no stale bytes).

Keep freed CPU memory inside the worker instead of handing it back to the kernel after every forward.

glibc serves large blocks with mmap and trims the heap once enough is free, adapting both thresholds to the
sizes a process has freed before. A worker that runs one image at a time keeps returning its activation
buffers and faulting them in again on the next forward. Raising both thresholds trades some resident memory
for faster CPU forwards; `python -m bench.allocator` measures it and docs/tuning.md (rule 7) has the figures.
On a GPU worker only the CPU-side buffers (decode, resize) are affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1  # <malloc.h>: keep this much free memory at the top of the heap before trimming
M_MMAP_THRESHOLD = -3  # <malloc.h>: blocks at least this large get their own mmap (and munmap on free)
M_PERTURB = -6  # <malloc.h>: fill new blocks with ~byte and freed blocks with byte (0 turns it off)
#: New blocks get the complement of this byte: zeros, the value a decoder's untouched rows would show anyway.
_PERTURB_BYTE = 0xFF
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int


def _glibc_mallopt():
    """glibc's ``mallopt``, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is not glibc."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


class FreshMemoryFill:
    """While active, glibc overwrites each block it hands out: no allocation carries an earlier owner's bytes.

    Why: a decoder that stops early (a truncated image) returns an array whose unwritten rows hold whatever
    the allocator's block held before, with keep_freed_memory typically the previous request's pixels. With
    the fill on, those rows are zeros instead, whatever the format and whatever the decoder's bug.

    Limits, both glibc's: blocks served from the per-thread cache (tcache, up to 1032 bytes) skip the fill,
    and ``calloc`` blocks are zeroed anyway. The setting is process-wide, so it is counted: the first user
    turns it on, the last one off (decode threads overlap). Filling costs a memset per allocation and per
    free while on, so it covers decoding only, never a forward.
    """

    def __init__(self) -> None:
        self._mallopt = _glibc_mallopt()
        self._lock = threading.Lock()
        self._users = 0

    @property
    def available(self) -> bool:
        return self._mallopt is not None

    @contextmanager
    def active(self) -> Iterator[bool]:
        """Fill fresh blocks inside the ``with`` block; yields False where the C library cannot."""
        if self._mallopt is None:
            yield False
            return
        self._set_users(+1)
        try:
            yield True
        finally:
            self._set_users(-1)

    def _set_users(self, change: int) -> None:
        with self._lock:
            self._users += change
            if self._users == (1 if change > 0 else 0):
                self._mallopt(M_PERTURB, _PERTURB_BYTE if self._users else 0)


#: The worker's one instance: the glibc setting it drives is per process.
FRESH_MEMORY_FILL = FreshMemoryFill()
