"""k8s/components/model-download/fetch_model.py against a real local HTTP server that misbehaves: a chunked
body cut mid-way (retried, then served whole) and a server that drips bytes (stopped by the overall deadline).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

FETCH = Path(__file__).resolve().parents[2] / "k8s" / "components" / "model-download" / "fetch_model.py"


def model_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (("co_detr/MAR-INF/MANIFEST.json", b'{"model": {"modelName": "co_detr"}}'),
                           ("co_detr/model.safetensors", os.urandom(300_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """GET /cut: chunked, the first request ends after one chunk; GET /drip: one byte every 0.2 s."""

    protocol_version = "HTTP/1.1"
    body = b""
    requests = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).requests += 1
        self.send_response(200)
        if self.path == "/drip":
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            for byte in self.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        half = len(self.body) // 2
        parts = [self.body[:half]] if self.requests == 1 else [self.body[:half], self.body[half:]]
        for part in parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        if self.requests > 1:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True  # the first answer ends mid-body: no last chunk


@pytest.fixture
def web() -> str:
    Misbehaving.body, Misbehaving.requests = model_tar(), 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fetch(tmp_path: Path, url: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {"PATH": os.environ["PATH"], "MODEL_URL": url, "MODEL_STORE": str(tmp_path / "store"),
            "MODEL_SHA256": hashlib.sha256(Misbehaving.body).hexdigest(), "FETCH_RETRY_DELAY_S": "0.1", **env}
    start = time.monotonic()
    run = subprocess.run([sys.executable, str(FETCH)], env=full, capture_output=True, text=True, timeout=60)
    return run, time.monotonic() - start


def test_a_chunked_download_cut_mid_way_is_retried(tmp_path: Path, web: str) -> None:
    run, _ = fetch(tmp_path, f"{web}/cut", FETCH_ATTEMPTS="3")
    assert run.returncode == 0, run.stderr
    assert "IncompleteRead" in run.stderr and "attempt 1/3 failed" in run.stderr
    assert Misbehaving.requests == 2
    assert (tmp_path / "store" / "co_detr" / "MAR-INF" / "MANIFEST.json").is_file()


def test_a_cut_download_that_never_completes_fails_with_a_message(tmp_path: Path, web: str) -> None:
    run, _ = fetch(tmp_path, f"{web}/cut", FETCH_ATTEMPTS="1")
    assert run.returncode == 1 and "download failed" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "store" / ".download").exists()


def test_a_dripping_server_cannot_hold_the_pod_past_the_deadline(tmp_path: Path, web: str) -> None:
    run, took = fetch(tmp_path, f"{web}/drip", FETCH_DEADLINE_S="2", FETCH_TIMEOUT_S="30")
    assert run.returncode == 1, run.stderr
    assert "FETCH_DEADLINE_S=2" in run.stderr and took < 10
    assert not (tmp_path / "store" / ".download").exists()
