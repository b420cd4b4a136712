"""A TorchServe on loopback for one benchmark run: isolated root, free ports, token auth, worker sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from codetr_serve.tools.local_torchserve import free_ports, write_ts_config

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


class TorchServe:
    """`torchserve --start --foreground` on free loopback ports with its own TEMP/TMPDIR and logs."""

    def __init__(self, root: Path, store: Path, models: dict[str, str], threads: int | None = None) -> None:
        self.root, self.store, self.models, self.threads = root, store, models, threads
        self.ports = free_ports()
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_s = float("nan")  # set by whoever waits for readiness

    @property
    def env(self) -> dict[str, str]:
        """Our environment with the venv on PATH, isolated TEMP/TMPDIR and the torch thread count."""
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "TEMP": str(self.root),
               "TMPDIR": str(self.root)}
        if self.threads:
            # TorchServe 0.12 sets OMP_NUM_THREADS only for torchrun models; workers inherit our env.
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def start(self) -> None:
        """Launch `torchserve --start --foreground` in its own session (so it can be stopped as a group)."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = write_ts_config(self.root, self.ports)
        command = [str(VENV_BIN / "torchserve"), "--start", "--ncs", "--foreground",
                   "--ts-config", str(config), "--model-store", str(self.store), "--models",
                   *[f"{name}={path}" for name, path in self.models.items()]]
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, api: str, path: str) -> str:
        """http://127.0.0.1:<port of api>/<path>."""
        return f"http://127.0.0.1:{self.ports[api]}/{path.lstrip('/')}"

    def key(self, api: str = "inference") -> str:
        """The token of `api` from key_file.json; "" while TorchServe has not (fully) written it yet."""
        try:
            return json.loads((self.root / "key_file.json").read_text())[api]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def log_text(self, name: str = "model_log.log") -> str:
        """One of TorchServe's log files under <root>/logs, or "" before it exists."""
        path = self.root / "logs" / name
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_ready(self, deadline_s: float) -> float:
        """Seconds from start until every model has a READY worker."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"torchserve exited early:\n{self.log_text()[-3000:]}")
            if self._all_ready():
                return time.perf_counter() - self.started_at
            time.sleep(0.5)
        raise TimeoutError(f"torchserve not ready after {deadline_s}s:\n{self.log_text()[-3000:]}")

    def _all_ready(self) -> bool:
        headers = {"Authorization": f"Bearer {self.key('management')}"}
        try:
            for name in self.models:
                entries = requests.get(self.url("management", f"models/{name}"), headers=headers,
                                       timeout=5).json()
                if not any(w["status"] == "READY" for e in entries for w in e.get("workers", [])):
                    return False
        except (requests.RequestException, ValueError, KeyError, TypeError, json.JSONDecodeError):
            return False
        return True

    def worker_pids(self, name: str) -> set[int]:
        """Process ids of model `name`'s workers, from the management API."""
        headers = {"Authorization": f"Bearer {self.key('management')}"}
        entries = requests.get(self.url("management", f"models/{name}"), headers=headers, timeout=10).json()
        return {int(w["pid"]) for e in entries for w in e.get("workers", []) if w.get("pid")}

    def metrics_text(self) -> str:
        """The Prometheus text of the metrics API ("" when it does not answer)."""
        try:
            return requests.get(self.url("metrics", "metrics"), timeout=10).text
        except requests.RequestException:
            return ""

    def stop(self) -> None:
        """`torchserve --stop`, then kill our own process group if it is still there after 30 s."""
        if self.process is None:
            return
        subprocess.run([str(VENV_BIN / "torchserve"), "--stop", "--foreground"], cwd=self.root, env=self.env,
                       capture_output=True, timeout=120)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
        self.process = None

    def __enter__(self) -> TorchServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
