"""Worker sampling for benchmark runs; the server itself is codetr_serve.tools.local_torchserve."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class WorkerSample:
    """CPU and memory of the model workers (and the Java frontend) over a phase."""

    cpu_percent: list[float] = field(default_factory=list)  # all workers together, 100 = one core
    frontend_cpu_percent: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)  # all workers together
    peak_worker_rss_mb: float = 0.0


class Sampler:
    """Samples worker CPU/RSS with psutil every `interval_s` in a background thread.

    The process tree is re-read every tick, so workers that start (or restart) mid-phase are counted.
    With `worker_pids`, only those workers count (one model's, when a server hosts several).
    """

    def __init__(self, root_pid: int, interval_s: float = 0.5, worker_pids: set[int] | None = None) -> None:
        self.root_pid, self.interval_s, self.worker_pids = root_pid, interval_s, worker_pids
        self.sample = WorkerSample()
        self._known: dict[int, tuple[psutil.Process, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _refresh(self) -> None:
        """Add new descendants as 'worker' or 'frontend'; the first cpu_percent call primes the counter."""
        try:
            tree = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in tree:
            if proc.pid in self._known:
                continue
            try:
                cmd = " ".join(proc.cmdline())
                proc.cpu_percent(None)
            except psutil.Error:
                continue
            kind = "worker" if "model_service_worker" in cmd else "frontend" if "java" in cmd else ""
            if kind == "worker" and self.worker_pids is not None and proc.pid not in self.worker_pids:
                kind = ""
            if kind:
                self._known[proc.pid] = (proc, kind)

    def _run(self) -> None:
        self._refresh()
        while not self._stop.wait(self.interval_s):
            self._take()
            self._refresh()

    def _take(self) -> None:
        totals = {"worker": 0.0, "frontend": 0.0}
        rss, peak = 0.0, 0.0
        for proc, kind in list(self._known.values()):
            try:
                totals[kind] += proc.cpu_percent(None)
                mem = proc.memory_info().rss / 2**20 if kind == "worker" else 0.0
            except psutil.Error:
                continue
            rss += mem
            peak = max(peak, mem)
        self.sample.cpu_percent.append(totals["worker"])
        self.sample.frontend_cpu_percent.append(totals["frontend"])
        self.sample.rss_mb.append(rss)
        self.sample.peak_worker_rss_mb = max(self.sample.peak_worker_rss_mb, peak)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
