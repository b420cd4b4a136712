"""Settings for a private TorchServe on loopback (tests and benchmarks): free ports, our config.properties.

Each instance gets its own directory, used as TorchServe's TMPDIR too, so its pid file, key file, logs
and unpacked models never collide with another instance on the same machine.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APIS = ("inference", "management", "metrics")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports() -> dict[str, int]:
    return {api: free_port() for api in APIS}


def write_ts_config(root: Path, ports: dict[str, int]) -> Path:
    """config/config.properties with the given loopback ports and an absolute metrics.yaml path."""
    text = (REPO / "config" / "config.properties").read_text()
    for api, port in ports.items():
        text = re.sub(rf"^{api}_address=.*$", f"{api}_address=http://127.0.0.1:{port}", text, flags=re.M)
    metrics_yaml = REPO / "config" / "metrics.yaml"
    text = text.replace("metrics_config=config/metrics.yaml", f"metrics_config={metrics_yaml}")
    path = root / "config.properties"
    path.write_text(text)
    return path
