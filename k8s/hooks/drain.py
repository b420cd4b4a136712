"""preStop hook of codetr-serve pods: let requests this pod already accepted finish before TorchServe stops.

TorchServe 0.12 closes its sockets as soon as it gets SIGTERM, failing every request still queued or running,
and Kubernetes sends SIGTERM as soon as this hook returns. So the hook:

1. waits DRAIN_DELAY_S seconds (default 15): the pod has already left the Service endpoints, and this is the
   time kube-proxy, ingresses and client-side balancers take to stop sending it new requests;
2. sends DRAIN_PROBES (default 2) tiny images to each model, one after another, through TorchServe's job
   queue. The queue is first in, first out: once a probe is answered, every request queued before it has
   been answered or is running on another worker, and the next probe outlasts that last batch;
3. returns. It never fails (a failing hook would only be logged), and stops at DRAIN_DEADLINE_S (default 320,
   above the model's responseTimeout of 300 s) so that terminationGracePeriodSeconds always covers it.

Token auth: the inference key comes from TorchServe's key_file.json in the image's start dir
($CODETR_WORKDIR, /tmp/torchserve); an expired key is renewed once through the management API on 127.0.0.1.
Model names: DRAIN_MODELS (comma separated), else the modelName in each model's MAR-INF/MANIFEST.json.
Standard library only: it runs with the image's python3 and nothing else.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

INFERENCE = os.environ.get("DRAIN_INFERENCE_URL", "http://127.0.0.1:8080")
MANAGEMENT = os.environ.get("DRAIN_MANAGEMENT_URL", "http://127.0.0.1:8081")
MODEL_STORE = Path(os.environ.get("MODEL_STORE", "/home/model-server/model-store"))
KEY_FILE = Path(os.environ.get("CODETR_WORKDIR", "/tmp/torchserve")) / "key_file.json"


def log(message: str) -> None:
    print(f"drain: {message}", file=sys.stderr, flush=True)


def probe_png(size: int = 64) -> bytes:
    """A grey size x size PNG, built by hand so that the hook needs no imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80" * size for _ in range(size))  # filter byte + 8-bit grey pixels
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def manifest_name(entry: Path) -> str | None:
    """modelName from a no-archive folder's or a .mar file's MAR-INF/MANIFEST.json (None: not a model)."""
    try:
        if entry.is_dir():
            manifest = json.loads((entry / "MAR-INF" / "MANIFEST.json").read_text())
        elif entry.suffix == ".mar":
            with zipfile.ZipFile(entry) as archive:
                manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        else:
            return None
        return manifest["model"]["modelName"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def model_names() -> list[str]:
    if os.environ.get("DRAIN_MODELS"):
        return [name.strip() for name in os.environ["DRAIN_MODELS"].split(",") if name.strip()]
    entries = sorted(MODEL_STORE.iterdir()) if MODEL_STORE.is_dir() else []
    return list(dict.fromkeys(name for name in map(manifest_name, entries) if name))  # versions share a name


def read_keys() -> dict[str, str]:
    if not KEY_FILE.is_file():
        return {}  # token auth is off
    data = json.loads(KEY_FILE.read_text())
    return {api: data[api]["key"] for api in ("inference", "management", "API") if api in data}


def renew_inference_key(keys: dict[str, str]) -> dict[str, str]:
    """TorchServe rewrites key_file.json with a fresh inference key when asked with the API key."""
    if "API" not in keys:
        return keys
    request = urllib.request.Request(f"{MANAGEMENT}/token?type=inference",
                                     headers={"Authorization": f"Bearer {keys['API']}"})
    try:
        urllib.request.urlopen(request, timeout=10).read()
    except (urllib.error.URLError, OSError) as error:
        log(f"could not renew the inference key: {error}")
    return read_keys()


def send_probe(model: str, image: bytes, keys: dict[str, str], timeout: float) -> tuple[int, str]:
    """(HTTP status, start of the body)."""
    headers = {"Content-Type": "image/png"}
    if "inference" in keys:
        headers["Authorization"] = f"Bearer {keys['inference']}"
    request = urllib.request.Request(f"{INFERENCE}/predictions/{model}", data=image, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, error.read(512).decode(errors="replace")


def main() -> int:
    start = time.monotonic()
    delay = float(os.environ.get("DRAIN_DELAY_S", "15"))
    probes = int(os.environ.get("DRAIN_PROBES", "2"))
    deadline = start + float(os.environ.get("DRAIN_DEADLINE_S", "320"))
    log(f"waiting {delay:g} s for endpoints to drop this pod")
    time.sleep(delay)
    image, keys = probe_png(), read_keys()
    for model in model_names():
        for number in range(1, probes + 1):
            left = deadline - time.monotonic()
            if left <= 1:
                log("deadline reached; stopping now")
                return 0
            try:
                status, body = send_probe(model, image, keys, timeout=left)
                if status == 400 and "InvalidKey" in body:  # the inference key expired (60 min by default)
                    keys = renew_inference_key(keys)
                    left = max(1.0, deadline - time.monotonic())
                    status, body = send_probe(model, image, keys, timeout=left)
            except (urllib.error.URLError, OSError) as error:
                log(f"{model}: probe {number} got no answer ({error}); nothing left to drain")
                break
            log(f"{model}: probe {number}/{probes} answered {status} after {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # a preStop hook must never block the shutdown
        log(f"unexpected error: {error!r}")
        sys.exit(0)
