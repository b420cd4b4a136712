#!/usr/bin/env python3
"""Container health check for TorchServe with token auth on (standard library only).

    codetr-healthcheck                  exit 0 when /ping says Healthy, else 1 (the Dockerfile's HEALTHCHECK)
    codetr-healthcheck --print-token    print the current inference key (docker exec <container> ...)
    codetr-healthcheck --refresh-token  have TorchServe issue a new inference key, then print it

TorchServe 0.12 answers /ping only with the inference key, and /ping is 200 only when every model has its
minimum workers up. The keys are random, live in key_file.json in TorchServe's start dir
($CODETR_WORKDIR) and expire after token_expiration_min (60 by default). When the inference key has expired
the check renews it through the management API on loopback (an expired key admits nobody, so no client
loses anything) and pings with the new one; only if that fails does it fall back to the metrics port (no
token there), where the frontend answering is all it can prove.
Addresses and whether auth is on are read from the TorchServe config ($TS_CONFIG_FILE).

The whole check ends within --deadline seconds (default DEADLINE_S), however many calls it makes (an expired
key costs a renewal plus a ping): probes that run it give it at least that plus a margin as timeoutSeconds
(k8s/base/deployment.yaml). It is also the pod's liveness probe there: TorchServe 0.12 keeps /ping at 200
while workers are busy and while a lost worker is being restarted, and turns it to 500 only once a worker has
failed to recover for the model's maxRetryTimeoutInSec (300 s by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

DEADLINE_S = 8.0  # the whole check, every HTTP call included
DEFAULTS = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
    "disable_token_authorization": "false",
}


def read_properties(path: Path) -> dict[str, str]:
    props = dict(DEFAULTS)
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")) and "=" in line:
                key, value = line.split("=", 1)
                props[key.strip()] = value.strip()
    return props


def local_url(address: str, path: str) -> str:
    """The URL of `path` on a TorchServe address (on Linux, 0.0.0.0 reaches the local host)."""
    return address.rstrip("/") + path


class Budget:
    """Seconds left for the whole check; each call gets at most `per_call` of them."""

    def __init__(self, total: float, per_call: float) -> None:
        self.end, self.per_call = time.monotonic() + total, per_call

    def next_call(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0.05:
            raise TimeoutError("the check's deadline passed before the server answered")
        return min(self.per_call, left)


def get(url: str, token: str | None, budget: Budget) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=budget.next_call()) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def read_keys(key_file: Path) -> dict:
    try:
        return json.loads(key_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"unhealthy: no {key_file} yet (TorchServe still starting, or started elsewhere: "
                         "set CODETR_WORKDIR to its start dir)") from None
    except (OSError, ValueError) as error:
        raise SystemExit(f"unhealthy: cannot read {key_file}: {error}") from None


def expired(entry: dict, now: datetime) -> bool:
    stamp = entry.get("expiration time")
    if not stamp:
        return False
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= now


def check(props: dict[str, str], key_file: Path, auth_off: bool, budget: Budget) -> int:
    token = None
    if not auth_off:
        inference = read_keys(key_file).get("inference", {})
        if expired(inference, datetime.now(UTC)) and renew(props, key_file, budget) == 0:
            inference = read_keys(key_file).get("inference", {})
        if expired(inference, datetime.now(UTC)):
            url = local_url(props["metrics_address"], "/metrics")
            status, _ = get(url, None, budget)
            if status == 200:
                print(f"healthy: frontend answers on {url}; /ping not checked because the inference key "
                      f"expired at {inference['expiration time']} (codetr-healthcheck --refresh-token)")
                return 0
            print(f"unhealthy: inference key expired and {url} answered {status}")
            return 1
        token = inference.get("key")
    url = local_url(props["inference_address"], "/ping")
    status, body = get(url, token, budget)
    try:
        state = json.loads(body).get("status")
    except (ValueError, AttributeError):
        state = None
    if status == 200 and state == "Healthy":
        print(f"healthy: {url} -> {status} {state}")
        return 0
    print(f"unhealthy: {url} -> {status} {body[:200].decode('utf-8', 'replace').strip()}")
    return 1


def renew(props: dict[str, str], key_file: Path, budget: Budget) -> int:
    """Have TorchServe issue a new inference key (it rewrites key_file.json); 0 on success."""
    api_key = read_keys(key_file).get("API", {}).get("key")
    url = local_url(props["management_address"], "/token?type=inference")
    try:
        status, body = get(url, api_key, budget)
    except OSError as error:
        status, body = 0, str(error).encode()
    if status != 200:
        detail = body[:200].decode("utf-8", "replace")
        print(f"token refresh failed: {url} -> {status} {detail}", file=sys.stderr)
        return 1
    return 0


def refresh(props: dict[str, str], key_file: Path, budget: Budget) -> int:
    if renew(props, key_file, budget):
        return 1
    print(read_keys(key_file)["inference"]["key"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--print-token", action="store_true", help="print the current inference key")
    action.add_argument("--refresh-token", action="store_true", help="issue a new inference key and print it")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP request at most")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S,
                        help=f"seconds for the whole check (default {DEADLINE_S:g})")
    args = parser.parse_args(argv)
    budget = Budget(args.deadline, args.timeout)

    config = os.environ.get("TS_CONFIG_FILE", "/home/model-server/config/config.properties")
    props = read_properties(Path(config))
    key_file = Path(os.environ.get("CODETR_WORKDIR", "/tmp/torchserve")) / "key_file.json"
    auth_off = (os.environ.get("CODETR_DISABLE_TOKEN_AUTH", "0").lower() in ("1", "true", "yes")
                or props["disable_token_authorization"].lower() == "true")
    if args.print_token or args.refresh_token:
        if auth_off:
            print("token auth is off: no token needed", file=sys.stderr)
            return 1
        if args.refresh_token:
            return refresh(props, key_file, budget)
        print(read_keys(key_file)["inference"]["key"])
        return 0
    try:
        return check(props, key_file, auth_off, budget)
    except OSError as error:  # connection refused, timeout: the server is not answering
        print(f"unhealthy: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
