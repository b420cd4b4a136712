"""The ceiling: the same model, same batch size, in-process through DetectorCore.handle (no TorchServe).

    python -m bench.inprocess --model-dir DIR --batch 4 --batches 5 --threads 1 --image x.jpg --out r.json
    python -m bench.inprocess --model-dir DIR --batch 4 --threads 1 --image x.jpg --serve

`--serve` keeps the model loaded and answers commands on stdin, one per line: "<n>" times n batches and
prints one JSON line; "quit" (or end of input) stops. `CeilingProcess` drives it, so the paired rounds can
alternate in-process and TorchServe phases on a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import torch

REPO = Path(__file__).resolve().parents[1]


class InProcessModel:
    """Our DetectorCore with one batch of identical requests ready to send."""

    def __init__(self, model_dir: Path, handler: dict, batch: int, image: bytes) -> None:
        from codetr_serve.runtime.core import DetectorCore
        from codetr_serve.runtime.settings import build_settings

        self.device = "cuda:0" if torch.cuda.is_available() else "cpu"
        self.batch = batch
        self.core = DetectorCore(build_settings(handler, model_dir=model_dir, device=self.device))
        self.core.setup()
        self.forward_s = 0.0
        self.requests = [{"body": bytearray(image)} for _ in range(batch)]
        self.headers = [{"Content-Type": "image/jpeg"}] * batch
        for _ in range(2):  # warm: allocator and kernels settle, as they have in a server that took traffic
            self.run_batch()

    def run_batch(self) -> float:
        """One `handle` call on the batch; its seconds. A non-200 reply is an error, not a figure."""
        start = time.perf_counter()
        replies = self.core.handle(self.requests, self.headers)
        seconds = time.perf_counter() - start
        if any(reply.status != 200 for reply in replies):
            raise RuntimeError(f"in-process batch failed: {[r.body for r in replies if r.status != 200]}")
        self.forward_s += self.core.last_stats.inference_ms / 1000.0  # what a worker reports as its forward
        return seconds

    def time_batches(self, batches: int, max_seconds: float = float("inf")) -> list[float]:
        """Seconds of up to `batches` batches, stopping early once `max_seconds` have passed."""
        self.forward_s = 0.0
        times, start = [], time.perf_counter()
        while len(times) < batches and time.perf_counter() - start < max_seconds:
            times.append(self.run_batch())
        return times

    def summary(self, times: list[float]) -> dict:
        """Images/s and ms per batch over `times`."""
        total = sum(times)
        return {"batch": self.batch, "batches": len(times), "seconds": total, "device": self.device,
                "threads": torch.get_num_threads(), "images_per_s": self.batch * len(times) / total,
                "ms_per_batch": 1000.0 * total / len(times), "forward_seconds": self.forward_s}


def serve(model: InProcessModel, commands: IO[str], replies: IO[str]) -> None:
    """Answer "<n>" lines with the JSON summary of n timed batches until "quit" or end of input."""
    print(json.dumps({"ready": True}), file=replies, flush=True)
    for line in commands:
        command = line.strip()
        if command == "quit":
            return
        print(json.dumps(model.summary(model.time_batches(int(command)))), file=replies, flush=True)


class CeilingProcess:
    """`bench.inprocess --serve` in its own process, with the same thread count as a worker gets."""

    def __init__(self, model_dir: Path, handler: dict, batch: int, threads: int, image: Path,
                 log: Path | None = None) -> None:
        self.log = log
        command = [sys.executable, "-m", "bench.inprocess", "--serve", "--model-dir", str(model_dir),
                   "--handler", json.dumps(handler), "--batch", str(batch), "--threads", str(threads),
                   "--image", str(image)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        stderr = log.open("w") if log else None  # the libraries' warnings, kept out of the bench's output
        self.process = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=stderr)
        self._reply()  # the model is loaded and warm

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench.inprocess --serve exited ({self.process.wait()}); "
                               f"see {self.log or 'its stderr'}")
        return json.loads(line)

    def measure(self, batches: int) -> dict:
        """Time `batches` batches in the loaded model; the JSON summary."""
        self.process.stdin.write(f"{batches}\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)

    def __enter__(self) -> CeilingProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def main(argv: list[str] | None = None) -> int:
    """Parse options, pin the thread count, then measure once (--out) or serve commands (--serve)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--handler", default="{}", help="JSON: the model-config handler section")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="one-shot: write the JSON summary here")
    parser.add_argument("--serve", action="store_true", help="answer timing commands on stdin")
    args = parser.parse_args(argv)
    if not args.serve and args.out is None:
        parser.error("give --out (one measurement) or --serve (commands on stdin)")
    replies = sys.stdout
    if args.serve:
        # Replies get a private copy of stdout; anything the libraries print goes to stderr instead.
        replies = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    if args.threads:
        torch.set_num_threads(args.threads)
    model = InProcessModel(args.model_dir, json.loads(args.handler), args.batch, args.image.read_bytes())
    if args.serve:
        serve(model, sys.stdin, replies)
    else:
        args.out.write_text(json.dumps(model.summary(model.time_batches(args.batches, args.max_seconds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
