"""initContainer step of codetr-serve pods: download a model store as a tar archive, check it, unpack it.

    MODEL_URL=https://.../co_detr-v2.tar MODEL_SHA256=<64 hex> python3 fetch_model.py

The archive holds what goes into TorchServe's model store, e.g. the `co_detr/` folder written by
`./archive.sh ... --format no-archive --out <store>` (made with `tar -C <store> -cf co_detr.tar co_detr`);
gzip is fine too. Steps: stream the download to MODEL_STORE/.download (retrying network errors), compare
its sha256 with MODEL_SHA256 (mismatch: exit 1 and nothing is unpacked), unpack it into a staging folder
refusing links, device files and paths that leave the store, check that a model came out, and only then
move it into the store.
A non-zero exit keeps the pod from starting; Kubernetes retries the initContainer with back-off.
Standard library only: it runs with the app image's python3 (no curl needed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


def log(message: str) -> None:
    print(f"fetch-model: {message}", file=sys.stderr, flush=True)


def download(url: str, target: Path, attempts: int, timeout: float) -> str:
    """Stream url into target; returns the sha256 of what was written."""
    for attempt in range(1, attempts + 1):
        digest, size = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
            log(f"downloaded {size / 1e6:.1f} MB")
            return digest.hexdigest()
        except OSError as error:  # URLError, HTTPError, timeouts and resets are all OSErrors
            log(f"attempt {attempt}/{attempts} failed: {error}")
            if attempt == attempts:
                raise
            time.sleep(min(60, 5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def safe_members(archive: tarfile.TarFile, root: Path):
    """Regular files and folders that stay inside root; anything else stops the unpacking."""
    for member in archive:
        destination = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()):
            raise ValueError(f"{member.name}: only files and folders are allowed in a model archive")
        if destination != root and root not in destination.parents:
            raise ValueError(f"{member.name}: path leaves the model store")
        yield member


def unpack(archive_path: Path, root: Path) -> None:
    # Python >= 3.12 (and patched 3.11) has tarfile's own "data" filter: use it on top of our checks.
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive_path, mode="r:*") as archive:
        for member in safe_members(archive, root):
            archive.extract(member, root, set_attrs=False, **extra)


def models_in(root: Path) -> list[str]:
    """Entries TorchServe can load: .mar files and no-archive folders (MAR-INF/MANIFEST.json)."""
    return sorted(p.name for p in root.iterdir()
                  if p.suffix == ".mar" or (p / "MAR-INF" / "MANIFEST.json").is_file())


def main() -> int:
    url = os.environ.get("MODEL_URL", "")
    expected = os.environ.get("MODEL_SHA256", "").strip().lower()
    root = Path(os.environ.get("MODEL_STORE", "/home/model-server/model-store")).resolve()
    if not url or len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        log("set MODEL_URL and MODEL_SHA256 (64 hex digits, from `sha256sum <archive>`)")
        return 2
    root.mkdir(parents=True, exist_ok=True)
    archive, staging = root / ".download", root / ".staging"
    archive.unlink(missing_ok=True)  # leftovers of an attempt that was killed
    shutil.rmtree(staging, ignore_errors=True)
    if models_in(root):
        log(f"{root} already holds {models_in(root)}; nothing to do")
        return 0
    log(f"fetching {url.split('?')[0]}")  # never log a query string: pre-signed URLs carry credentials there
    actual = download(url, archive, attempts=int(os.environ.get("FETCH_ATTEMPTS", "5")),
                      timeout=float(os.environ.get("FETCH_TIMEOUT_S", "60")))
    if actual != expected:
        archive.unlink()
        log(f"sha256 mismatch: expected {expected}, got {actual}; refusing to serve it")
        return 1
    staging.mkdir()
    try:
        unpack(archive, staging.resolve())
    except (ValueError, tarfile.TarError) as error:
        log(f"bad archive: {error}")
        return 1
    finally:
        archive.unlink()
    found = models_in(staging)
    if not found:
        log("the archive holds no model (no .mar file, no folder with MAR-INF/MANIFEST.json)")
        return 1
    for entry in staging.iterdir():  # only a complete, checked store becomes visible
        entry.rename(root / entry.name)
    staging.rmdir()
    log(f"sha256 ok; model store now holds {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
