"""Load generator, run as its own process: closed loop at concurrency N, or open loop at a fixed rate.

    python -m bench.loadgen --url http://127.0.0.1:PORT/predictions/m --image x.jpg --mode closed \
        --concurrency 8 --max-requests 64 --max-seconds 20 --out result.json
    python -m bench.loadgen --url URL_A --url URL_B --image x.jpg --mode alternate --max-requests 20 ...

`alternate` sends one request at a time to the given URLs in the order A B B A A B B A ..., so two models
served side by side see the same machine: a drift in speed lands on both, and the order evens out.

Latency of an open-loop request counts from its scheduled send time, so a server that falls behind is
charged for the queueing it causes (no coordinated omission). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENV = "CODETR_BENCH_TOKEN"  # the inference key travels in the environment, not on the command line


@dataclass
class Record:
    """One request: when it was due (s since phase start), latency, HTTP status (0: failed), which URL."""

    due_s: float
    latency_ms: float
    status: int
    target: int = 0


@dataclass
class Target:
    """Where and what to send."""

    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float


@dataclass
class PhaseResult:
    """Everything one phase produced."""

    mode: str
    concurrency: int
    rate: float
    duration_s: float
    records: list[Record] = field(default_factory=list)


def send(session: requests.Session, target: Target, due: float, origin: float, index: int = 0) -> Record:
    """POST the image once; latency from `due` (a perf_counter time) to the end of the response."""
    try:
        status = session.post(target.url, data=target.body, headers=target.headers,
                              timeout=target.timeout_s).status_code
    except requests.RequestException:
        status = 0
    return Record(due - origin, (time.perf_counter() - due) * 1000.0, status, index)


def abba_order(count: int, targets: int = 2) -> list[int]:
    """Target index of each of `count` requests: 0 1 1 0 0 1 1 0 ... (two targets), round-robin otherwise."""
    if targets == 2:
        return [(index + 1) // 2 % 2 for index in range(count)]
    return [index % targets for index in range(count)]


def alternate_loop(targets: list[Target], max_requests: int, max_seconds: float) -> PhaseResult:
    """One request at a time, alternating between `targets` (see `abba_order`), bounded in count and time."""
    records: list[Record] = []
    origin = time.perf_counter()
    with requests.Session() as session:
        for index in abba_order(max_requests, len(targets)):
            if time.perf_counter() - origin >= max_seconds:
                break
            records.append(send(session, targets[index], time.perf_counter(), origin, index))
    return PhaseResult("alternate", 1, 0.0, time.perf_counter() - origin, records)


def closed_loop(target: Target, concurrency: int, max_requests: int, max_seconds: float) -> PhaseResult:
    """`concurrency` clients, each sending its next request as soon as the previous one returns."""
    records: list[Record] = []
    lock, issued = threading.Lock(), [0]
    origin = time.perf_counter()
    deadline = origin + max_seconds

    def client() -> None:
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                record = send(session, target, time.perf_counter(), origin)
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max_seconds + target.timeout_s + 5)
    return PhaseResult("closed", concurrency, 0.0, time.perf_counter() - origin, records)


def open_loop(target: Target, rate: float, max_requests: int, max_seconds: float,
              max_in_flight: int = 64) -> PhaseResult:
    """Requests due every 1/rate s whatever the server does (up to `max_in_flight` outstanding)."""
    local = threading.local()

    def job(due: float, origin: float) -> Record:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return send(local.session, target, due, origin)

    origin = time.perf_counter()
    count = min(max_requests, max(2, int(rate * max_seconds)))  # at least two, even at a low rate
    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        futures = []
        for index in range(count):
            due = origin + index / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            futures.append(pool.submit(job, due, origin))
        records = [future.result() for future in futures]
    return PhaseResult("open", 0, rate, time.perf_counter() - origin, records)


def check_loopback(url: str) -> None:
    """Refuse to send load anywhere but this machine."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"loadgen: refusing to load {host!r}: only loopback targets are allowed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, action="append", help="repeat for --mode alternate")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""),
                        help=f"inference key (Authorization: Bearer); default ${TOKEN_ENV}")
    parser.add_argument("--mode", choices=("closed", "open", "alternate"), default="closed")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1.0, help="open loop: requests per second")
    parser.add_argument("--max-requests", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one phase against a loopback URL and write its records as JSON."""
    args = parse_args(argv)
    for url in args.url:
        check_loopback(url)
    headers = {"Content-Type": "image/jpeg"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    body = args.image.read_bytes()
    targets = [Target(url, body, headers, args.timeout) for url in args.url]
    if args.mode == "alternate":
        result = alternate_loop(targets, args.max_requests, args.max_seconds)
    elif args.mode == "closed":
        result = closed_loop(targets[0], args.concurrency, args.max_requests, args.max_seconds)
    else:
        result = open_loop(targets[0], args.rate, args.max_requests, args.max_seconds)
    args.out.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
