"""initContainer step of codetr-serve pods: download a model store as a tar archive, check it, unpack it.

    MODEL_URL=https://.../co_detr-v2.tar MODEL_SHA256=<64 hex> python3 fetch_model.py

The archive holds what goes into TorchServe's model store, e.g. the `co_detr/` folder written by
`./archive.sh ... --format no-archive --out <store>` (made with `tar -C <store> -cf co_detr.tar co_detr`);
gzip is fine too. Steps: stream the download to MODEL_STORE/.download (retrying network errors), compare
its sha256 with MODEL_SHA256 (mismatch: exit 1 and nothing is unpacked), unpack it into a staging folder
refusing links, device files and paths that leave the store, check that a model came out, and only then
move it into the store.
A non-zero exit keeps the pod from starting; Kubernetes retries the initContainer with back-off.
Time limits: FETCH_TIMEOUT_S (default 60) per network read, and FETCH_DEADLINE_S (default 3600) for the
whole download with its retries: a server that drips bytes would otherwise hold the pod in Init forever,
because each read succeeds. A connection cut mid-way (reset, or a chunked body that ends early) is retried
FETCH_ATTEMPTS times (default 5), waiting FETCH_RETRY_DELAY_S (default 5) doubled each time, 60 s at most.
Standard library only: it runs with the app image's python3 (no curl needed).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


def log(message: str) -> None:
    print(f"fetch-model: {message}", file=sys.stderr, flush=True)


class DeadlinePassed(Exception):
    """FETCH_DEADLINE_S ran out (not an OSError, so no retry catches it)."""


def on_alarm(signum: int, frame: object) -> None:
    raise DeadlinePassed


def download(url: str, target: Path, attempts: int, timeout: float, retry_delay: float = 5.0) -> str:
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
        # URLError, HTTPError, timeouts and resets are OSErrors; a body cut short is an HTTPException
        # (IncompleteRead: a chunked body that ends early, or fewer bytes than Content-Length).
        except (OSError, http.client.HTTPException) as error:
            log(f"attempt {attempt}/{attempts} failed: {error!r}")
            if attempt == attempts:
                raise
            time.sleep(min(60.0, retry_delay * 2 ** (attempt - 1)))
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
    deadline = int(os.environ.get("FETCH_DEADLINE_S", "3600"))
    signal.signal(signal.SIGALRM, on_alarm)  # interrupts a read that is blocked, too
    signal.alarm(deadline)
    try:
        actual = download(url, archive, attempts=int(os.environ.get("FETCH_ATTEMPTS", "5")),
                          timeout=float(os.environ.get("FETCH_TIMEOUT_S", "60")),
                          retry_delay=float(os.environ.get("FETCH_RETRY_DELAY_S", "5")))
    except DeadlinePassed:
        archive.unlink(missing_ok=True)
        log(f"no complete download within FETCH_DEADLINE_S={deadline} s; giving up (the pod retries)")
        return 1
    except (OSError, http.client.HTTPException) as error:
        archive.unlink(missing_ok=True)
        log(f"download failed: {error!r}")
        return 1
    finally:
        signal.alarm(0)
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
