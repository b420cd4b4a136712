"""The published reference code in a process of its own, timed forward by forward for `bench.cpu`.

The reference is open-mmlab/mmdetection's `projects/CO-DETR/codetr/` package on the installed mmdet 3.3.0,
mmcv 2.1.0 and mmengine 0.10.7. The mmdet wheel does not contain it and this repository never ships it:
    git clone --depth 1 https://github.com/open-mmlab/mmdetection /tmp/mmdet-ref
    python -m bench.cpu --paths reference fallback fast --reference-src /tmp/mmdet-ref
(a folder that holds only `projects/CO-DETR/codetr/` from such a checkout does as well).

It registers the same mmdet type names as `codetr_serve.models` (CoDETR, CoDINOHead, ...), so it cannot
share a process with our model. `ReferenceProcess` starts `python -m bench.cpu_reference`, which:
1. parses our serving config without its `custom_imports` and imports the reference package from its file
   path (the checkout never goes on sys.path: its own `mmdet/` would shadow the installed mmdet 3.3.0),
   then checks that every Co-DETR type name resolves to the reference's classes;
2. gives the model `train_cfg=[None] * heads` when the config has none: our serving configs leave training
   settings out and the reference's CoDETR indexes train_cfg once per head (no effect on inference);
3. builds the model, loads the parent's weights strictly (safetensors), and loads the parent's prepared
   image: the (3, h, w) uint8 tensor and metainfo our core feeds its forward (same JPEG, same decode and
   resize), so both sides run the same pixels through the same weights;
4. runs one untimed warm-up forward, then answers one JSON line per request on its stdin.

What each side times (neither includes JPEG decoding or resizing):
  ours       `DetectorCore.last_stats.inference_ms`: the data preprocessor (normalise, pad) plus
             `model.predict(..., rescale=True)` under torch.inference_mode
  reference  `model.test_step({"inputs": [image], "data_samples": [sample]})` under torch.no_grad, the call
             mmdet's `inference_detector` makes after its pipeline: the same preprocessor plus predict
Peak RSS is per process (VmHWM, reset before each forward): the reference's own model and heap only.
The child keeps glibc's default allocator settings, as a script calling mmdet's API would; our process
serves with `keep_freed_memory` on (its default, docs/tuning.md rule 7), which is part of what even our
`fallback` path gains over the reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path("projects") / "CO-DETR" / "codetr"
MODULE = "mmdet_reference_codetr"  # the name the reference package is imported under in the child
TYPES = ("CoDETR", "CoDINOHead", "CoDinoTransformer", "DinoTransformerDecoder", "DetrTransformerEncoder",
         "DetrTransformerDecoderLayer", "CoATSSHead", "CoStandardRoIHead")
SCORE_TOL, BOX_TOL = 5e-3, 2.0  # "equal" in the parity line: float reordering shifts random-weight scores


def package_dir(src: Path) -> Path:
    """The reference package inside `src`; ValueError saying how to get it when it is not there."""
    folder = Path(src) / PACKAGE
    if not (folder / "__init__.py").is_file():
        raise ValueError(f"{folder}/__init__.py not found: --reference-src needs an mmdetection checkout "
                         "(git clone --depth 1 https://github.com/open-mmlab/mmdetection DIR)")
    return folder


def peak_rss_mb(reset: bool = False) -> float:
    """VmHWM of this process in MB; `reset` starts a new peak (Linux clear_refs 5)."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def detections_of(instances) -> dict:
    """An mmdet InstanceData's boxes, scores and labels as plain lists (JSON, comparisons)."""
    return {"bboxes": instances.bboxes.float().tolist(), "scores": instances.scores.float().tolist(),
            "labels": instances.labels.tolist()}


# -- the parent's side -----------------------------------------------------------------------------------
def compare(ours: dict, reference: dict, gate_px: float = 20.0) -> dict:
    """Order-free comparison of two detection sets: one-to-one pairs of same-label detections with the
    nearest boxes (and scores; Hungarian assignment); a pair further apart than `gate_px` is no match.
    Returns the counts (matched pairs, and those within BOX_TOL / SCORE_TOL) and the largest |difference|
    of the matched boxes (px) and scores. With random weights one near-tie flipped by float reordering
    can change which of two overlapping boxes soft-NMS decays: one pair then differs by a large score."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    boxes = [np.asarray(d["bboxes"], dtype=np.float64).reshape(-1, 4) for d in (ours, reference)]
    scores = [np.asarray(d["scores"], dtype=np.float64) for d in (ours, reference)]
    labels = [np.asarray(d["labels"]) for d in (ours, reference)]
    box = np.abs(boxes[0][:, None, :] - boxes[1][None, :, :]).max(-1)
    score = np.abs(scores[0][:, None] - scores[1][None, :])
    same = labels[0][:, None] == labels[1][None, :]
    rows, cols = linear_sum_assignment(box + 100.0 * score + 1e6 * ~same) if box.size else ([], [])
    pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if same[r, c] and box[r, c] <= gate_px]
    max_box = max((float(box[r, c]) for r, c in pairs), default=float("nan"))
    max_score = max((float(score[r, c]) for r, c in pairs), default=float("nan"))
    close = sum(1 for r, c in pairs if box[r, c] <= BOX_TOL and score[r, c] <= SCORE_TOL)
    counts = {"ours": len(scores[0]), "reference": len(scores[1]), "matched": len(pairs), "within_tol": close}
    equal = counts["ours"] == counts["reference"] == counts["matched"] == close
    return {**counts, "max_box_diff_px": max_box, "max_score_diff": max_score, "equal": equal}


def save_inputs(model, prepared, folder: Path) -> tuple[Path, Path]:
    """Write `model`'s weights and one prepared image (tensor + metainfo) for the child; safetensors only."""
    from safetensors.torch import save_file

    weights, image = folder / "weights.safetensors", folder / "image.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    metainfo = dict(prepared.data_sample.metainfo)
    save_file({"inputs": prepared.inputs.contiguous()}, str(image),
              metadata={"metainfo": json.dumps(metainfo)})
    return weights, image


class ReferenceProcess:
    """The child as a context manager: started and warmed up on enter, `forward()` per timed forward."""

    def __init__(self, src: Path, config: Path, weights: Path, image: Path, threads: int, log: Path) -> None:
        self.command = [sys.executable, "-m", "bench.cpu_reference", "--src", str(src),
                        "--config", str(config), "--weights", str(weights), "--image", str(image),
                        "--threads", str(threads)]
        self.log, self.ready = log, {}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ReferenceProcess:
        repo = Path(__file__).resolve().parents[1]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command, cwd=repo, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        try:
            self.ready = self._answer()
        except BaseException:
            self.__exit__()  # a child that has not said ready is not left behind
            raise
        return self

    def forward(self) -> dict:
        """One timed forward in the child: forward_s, peak_rss_mb, detections."""
        self.process.stdin.write(json.dumps({"op": "forward"}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        answer = json.loads(line) if line.strip() else {"error": "the reference process ended"}
        if "error" in answer:
            tail = self.log.read_text()[-3000:] if self.log.is_file() else ""
            raise RuntimeError(f"reference: {answer['error']}\n{tail}")
        return answer

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        try:
            self.process.stdin.close()  # end of requests: the child exits
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


# -- the child's side ------------------------------------------------------------------------------------
def import_reference(src: Path) -> dict[str, str]:
    """Import the reference package by path; the module each Co-DETR type name now resolves to."""
    folder = package_dir(src)
    spec = importlib.util.spec_from_file_location(MODULE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    from mmdet.registry import MODELS

    resolved = {name: MODELS.get(name).__module__ for name in TYPES}
    foreign = {name: where for name, where in resolved.items() if not where.startswith(MODULE)}
    if foreign:
        raise RuntimeError(f"these types do not come from {folder}: {foreign}")
    return resolved


def build_reference(src: Path, config: Path, weights: Path):
    """The reference model from our serving config, with the parent's weights, in eval mode."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from safetensors.torch import load_file

    cfg = Config.fromfile(str(config), import_custom_modules=False)
    types = import_reference(src)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    if cfg.model.get("train_cfg") is None:
        cfg.model.train_cfg = [None] * len(cfg.model.test_cfg)
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), types


def load_image(image: Path) -> tuple:
    """The prepared tensor and its metainfo (lists back to tuples, as the pipeline made them)."""
    from safetensors import safe_open

    with safe_open(str(image), framework="pt") as handle:
        metainfo = json.loads(handle.metadata()["metainfo"])
        inputs = handle.get_tensor("inputs")
    return inputs, {k: tuple(v) if isinstance(v, list) else v for k, v in metainfo.items()}


def timed_forward(model, inputs, metainfo: dict) -> dict:
    import torch
    from mmdet.structures import DetDataSample

    batch = {"inputs": [inputs], "data_samples": [DetDataSample(metainfo=dict(metainfo))]}
    peak_rss_mb(reset=True)
    start = time.perf_counter()
    with torch.no_grad():
        samples = model.test_step(batch)
    return {"forward_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(),
            "detections": detections_of(samples[0].pred_instances)}


def serve(args: argparse.Namespace, answers) -> None:
    """Build, warm up, say ready, then one forward per request line until stdin closes."""
    import torch

    torch.set_num_threads(args.threads)
    model, types = build_reference(Path(args.src), Path(args.config), Path(args.weights))
    inputs, metainfo = load_image(Path(args.image))
    warmup = timed_forward(model, inputs, metainfo)
    answers.write(json.dumps({"ready": True, "types": types, "threads": torch.get_num_threads(),
                              "warmup_s": warmup["forward_s"], "peak_rss_mb": warmup["peak_rss_mb"]}) + "\n")
    answers.flush()
    for line in sys.stdin:
        if json.loads(line).get("op") == "forward":
            answers.write(json.dumps(timed_forward(model, inputs, metainfo)) + "\n")
            answers.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the reference side of bench.cpu (started by it)")
    for name in ("--src", "--config", "--weights", "--image"):
        parser.add_argument(name, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    # Answers go to the original stdout only; everything the libraries print goes to stderr (the log).
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        serve(args, answers)
    except Exception as error:  # noqa: BLE001 - the parent shows it with the log's tail
        answers.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
        answers.flush()
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
