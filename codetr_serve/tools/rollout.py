"""Roll a new model version out on a running TorchServe without failing requests.

register the new .mar (workers started synchronously) -> make it the default version (new traffic moves)
-> scale it -> drain each old version -> unregister it.

Draining matters: TorchServe 0.12 drops requests still queued on, or being run by, a version that gets
unregistered (the client never gets an answer). Its job queue is FIFO, so after the switch we send one probe
straight to the old version; when the probe is answered, everything queued before it has been answered too.
Needs the management API with the model API enabled (torchserve --enable-model-api).

    python -m codetr_serve.tools.rollout --mar co_detr_v2.mar --model co_detr --workers 1
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

from codetr_serve.tools.torchserve_api import TorchServeClient


def manifest_version(mar: str, model_store: Path) -> str:
    """The modelVersion inside a .mar file or no-archive folder in the model store."""
    import json

    path = model_store / mar
    if path.is_dir():
        return json.loads((path / "MAR-INF" / "MANIFEST.json").read_text())["model"]["modelVersion"]
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"]


def roll_out(client: TorchServeClient, model: str, mar: str, version: str, workers: int) -> list[str]:
    """Returns the versions that were unregistered."""
    registered = _registered_versions(client, model)
    old = [v for v in registered if v != version]
    if version not in registered:
        print(f"registering {mar} as {model} {version} with {workers} worker(s)", flush=True)
        client.manage("POST", "models", url=mar, model_name=model, initial_workers=workers,
                      synchronous="true")
    client.manage("PUT", f"models/{model}/{version}/set-default")
    print(f"{model} {version} is now the default version", flush=True)
    client.manage("PUT", f"models/{model}/{version}", min_worker=workers, max_worker=workers,
                  synchronous="true")
    time.sleep(0.5)  # requests routed just before the switch reach their queue first
    for stale in old:
        drain(client, model, stale)
        client.manage("DELETE", f"models/{model}/{stale}")
        print(f"unregistered {model} {stale}", flush=True)
    return old


def drain(client: TorchServeClient, model: str, version: str) -> None:
    """Return once every request queued on `version` before this call has been answered."""
    probe = client.predict(f"{model}/{version}", _probe_image())
    print(f"drained {model} {version} (probe answered {probe.status_code})", flush=True)


def _probe_image() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def _registered_versions(client: TorchServeClient, model: str) -> list[str]:
    try:
        return client.versions(model)
    except RuntimeError:  # 404: not registered yet, the first rollout registers it
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Roll out a new model version with no failed requests.")
    parser.add_argument("--mar", required=True, help="archive file (or no-archive folder) in the model store")
    parser.add_argument("--model", default="co_detr", help="model name served at /predictions/<model>")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    args = parser.parse_args(argv)
    client = TorchServeClient(management_url=args.management_url, key_file=args.key_file)
    version = manifest_version(args.mar, args.model_store)
    roll_out(client, args.model, args.mar, version, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
