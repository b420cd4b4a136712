"""Stand-ins for TorchServe used by test_dockerfile.py: a fake `torchserve` launcher and a fake HTTP frontend.

The fake launcher behaves like TorchServe 0.12's ts/model_server.py where it matters to the entrypoint: it
records how it was called, starts a child "JVM", writes that child's pid to tempfile.gettempdir()/
.model_server.pid, installs no signal handler and exits 0 once the child is gone, however it ended.
The fake frontend answers /ping only with the inference key, /metrics without one, and /token?type=inference
with the API key, keeping key_file.json in TorchServe's format (Java Instant timestamps).
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

LAUNCHER = '''\
import json, os, subprocess, sys, tempfile
record = os.environ["FAKE_TS_RECORD"]
with open(record, "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, f)
if os.environ.get("FAKE_TS_EXIT"):
    sys.exit(int(os.environ["FAKE_TS_EXIT"]))
jvm = subprocess.Popen([sys.executable, "-c", JVM, os.path.dirname(record)])
with open(os.path.join(tempfile.gettempdir(), ".model_server.pid"), "w") as f:
    f.write(str(jvm.pid))
jvm.wait()
'''

JVM = '''\
import os, signal, sys, time
folder = sys.argv[1]
def on_term(signum, frame):
    with open(os.path.join(folder, "jvm-terminated"), "w") as f:
        f.write(signal.Signals(signum).name)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(folder, "jvm-ready"), "w").close()
time.sleep(float(os.environ.get("FAKE_JVM_LIFETIME", "60")))
sys.exit(1)
'''


def fake_launcher_path(tmp_path: Path) -> Path:
    """A folder holding an executable `torchserve` to put first on PATH."""
    folder = tmp_path / "fakebin"
    folder.mkdir(exist_ok=True)
    script = folder / "torchserve"
    script.write_text(f"#!{sys.executable}\nJVM = {JVM!r}\n{LAUNCHER}")
    script.chmod(0o755)
    return folder


def write_props(path: Path, port: int) -> None:
    """A TorchServe config whose three addresses all point at the fake server (inference via 0.0.0.0)."""
    path.write_text(f"inference_address=http://0.0.0.0:{port}\nmanagement_address=http://127.0.0.1:{port}\n"
                    f"metrics_address=http://127.0.0.1:{port}\n")


def java_instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"   # nanosecond precision, like Instant.toString


class FakeTorchServe:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.inference_key = secrets.token_urlsafe(6)
        self.api_key = secrets.token_urlsafe(6)
        self.healthy = True
        self.metrics_up = True
        self.auth_off = False
        self.seen_auth: list[str | None] = []
        self.seen_paths: list[str] = []
        self.write_keys()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def write_keys(self, inference: str | None = None, expired: bool = False) -> None:
        """key_file.json with the server's keys, or with `inference` as a key the server does not know."""
        until = datetime.now(UTC) + timedelta(minutes=-1 if expired else 60)
        keys = {"management": {"key": "mgmt", "expiration time": java_instant(until)},
                "inference": {"key": inference or self.inference_key, "expiration time": java_instant(until)},
                "API": {"key": self.api_key}}
        (self.workdir / "key_file.json").write_text(json.dumps(keys, indent=2))

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                auth = self.headers.get("Authorization")
                fake.seen_paths.append(url.path)
                if url.path == "/metrics":
                    self._send(200 if fake.metrics_up else 503, "ts_inference_requests_total 1\n")
                elif url.path == "/ping":
                    fake.seen_auth.append(auth)
                    if not fake.auth_off and auth != f"Bearer {fake.inference_key}":
                        self._send(400, json.dumps({"code": 400, "type": "InvalidKeyException"}))
                    else:
                        state = "Healthy" if fake.healthy else "Unhealthy"
                        self._send(200 if fake.healthy else 500, json.dumps({"status": state}))
                elif url.path == "/token" and url.query == "type=inference" \
                        and auth == f"Bearer {fake.api_key}":
                    fake.inference_key = secrets.token_urlsafe(6)
                    fake.write_keys()
                    self._send(200, "")
                else:
                    self._send(400, json.dumps({"code": 400, "type": "InvalidKeyException"}))

        return Handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeTorchServe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.stop()
