"""CPU pinning for the paired rounds: every process that runs the model shares one core, the rest serve.

On a shared VM each virtual core's speed drifts on its own (a forward pinned to core 0 vs core 1 differed
by up to 15 %, in either direction, minute to minute). Alternating configs in time removes the drift only if
the compared sides also run on the same core, so the workers and the in-process model all go on the last
core, while the Java frontend, the load generator and this orchestrator use the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CoreSplit:
    """Which cores run the model (workers, in-process copy) and which run everything else."""

    model: frozenset[int]
    serving: frozenset[int]


def split_cores(available: Iterable[int] | None = None) -> CoreSplit | None:
    """The last available core for the model, the others for serving; None with fewer than two cores."""
    cores = sorted(os.sched_getaffinity(0) if available is None else available)
    if len(cores) < 2:
        return None
    return CoreSplit(frozenset(cores[-1:]), frozenset(cores[:-1]))


def pin_process(pid: int, cores: Iterable[int]) -> int:
    """Pin every thread of `pid` (affinity is per thread on Linux); returns how many threads were pinned."""
    pinned = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in threads:
        try:
            os.sched_setaffinity(int(tid), set(cores))
            pinned += 1
        except OSError:  # the thread ended meanwhile
            continue
    return pinned


def frontend_pids(root_pid: int) -> list[int]:
    """The Java frontend process(es) under a `torchserve` launcher."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    return [p.pid for p in children if "java" in (p.name() or "")]


@contextmanager
def pinned(split: CoreSplit | None, model_pids: Iterable[int], serving_pids: Iterable[int]) -> Iterator[dict]:
    """Pin model and serving processes (and this process, whose children inherit it); restore ours after."""
    if split is None:
        yield {"model_cores": None, "serving_cores": None}
        return
    own = os.sched_getaffinity(0)
    for pid in serving_pids:
        pin_process(pid, split.serving)
    pin_process(os.getpid(), split.serving)
    for pid in model_pids:
        pin_process(pid, split.model)
    try:
        yield {"model_cores": sorted(split.model), "serving_cores": sorted(split.serving)}
    finally:
        pin_process(os.getpid(), own)
