"""A private TorchServe on loopback for tests, benchmarks and soaks: free ports, our config.properties.

Each instance gets its own directory, used as TorchServe's TMPDIR too, so its pid file, key file, logs
and unpacked models never collide with another instance on the same machine.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
APIS = ("inference", "management", "metrics")
GRPC_APIS = ("grpc_inference", "grpc_management")
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports() -> dict[str, int]:
    """A free loopback port for each HTTP API and for both gRPC APIs.

    TorchServe 0.12 always starts its gRPC servers (no switch turns them off), on 7070/7071 unless told
    otherwise, so two private servers on one machine need their own gRPC ports too.
    """
    return {api: free_port() for api in (*APIS, *GRPC_APIS)}


def write_ts_config(root: Path, ports: dict[str, int], text: str | None = None) -> Path:
    """config/config.properties (or `text`) with the given loopback ports and absolute metrics.yaml path."""
    text = (REPO / "config" / "config.properties").read_text() if text is None else text
    for api in APIS:
        address = f"{api}_address=http://127.0.0.1:{ports[api]}"
        text = re.sub(rf"^{api}_address=.*$", address, text, flags=re.M)
    text += "".join(f"\n{api}_port={ports[api]}" for api in GRPC_APIS if api in ports) + "\n"
    metrics_yaml = REPO / "config" / "metrics.yaml"
    text = text.replace("metrics_config=config/metrics.yaml", f"metrics_config={metrics_yaml}")
    path = root / "config.properties"
    path.write_text(text)
    return path


class LocalTorchServe:
    """`torchserve --start --foreground` on free loopback ports with its own TEMP/TMPDIR and logs."""

    def __init__(self, root: Path, store: Path, models: dict[str, str], threads: int | None = None,
                 flags: tuple[str, ...] = (), config_text: str | None = None) -> None:
        self.root, self.store, self.models, self.threads = root, store, models, threads
        self.flags, self.config_text = flags, config_text  # extra CLI flags; replaces config.properties
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
        config = write_ts_config(self.root, self.ports, self.config_text)
        command = [str(VENV_BIN / "torchserve"), "--start", "--ncs", "--foreground", *self.flags,
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
        """One of TorchServe's log files under <root>/logs ("*" for all of them), or "" before it exists."""
        logs = self.root / "logs"
        if not logs.is_dir():
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob(name)))

    def wait_ready(self, deadline_s: float) -> float:
        """Seconds from start until every model has a READY worker."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"torchserve exited early (exit status {self.process.returncode}); "
                                   f"{self.log_tails()}")
            if self._all_ready():
                return time.perf_counter() - self.started_at
            time.sleep(0.5)
        raise TimeoutError(f"torchserve not ready after {deadline_s}s; {self.log_tails()}")

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of the frontend's log and of the workers' log, each under its name.

        Why a server stopped is in ts_log.log; one tail of all logs together showed only worker lines."""
        tails = [f"{name} (last {lines} lines):\n" + "\n".join(self.log_text(name).splitlines()[-lines:])
                 for name in ("ts_log.log", "model_log.log")]
        return f"logs under {self.root / 'logs'}\n" + "\n".join(tails)

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

    def __enter__(self) -> LocalTorchServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
