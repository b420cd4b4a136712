"""Detections of an exported graph (ONNX Runtime, CPU) against the PyTorch model's, matched without order.

The graph and ``CoDETR.predict`` run the same float32 arithmetic in different kernels, so sums come out in
another order: a score may differ in its last bits and two (almost) tied candidates may swap places. Each
PyTorch detection is therefore matched to an unused graph detection of the same label within
``score_tol`` and ``box_tol``; every detection must find a partner and the counts must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# (canvas (h, w), valid (h, w) per image): landscape and portrait, batch 1 and 2, the second image padded;
# none of the canvases is the export's example (2 x 320 x 480), so these also prove the dynamic axes.
CASES = {
    "landscape-b1": ((288, 448), [(288, 448)]),
    "landscape-b2": ((288, 448), [(288, 448), (256, 384)]),
    "portrait-b1": ((480, 320), [(480, 320)]),
    "portrait-b2": ((480, 320), [(448, 320), (480, 256)]),
}
SCORE_TOL = 1e-4
BOX_TOL = 1e-2  # pixels of the original image


@dataclass
class CaseResult:
    name: str
    counts: tuple[list[int], list[int]]  # PyTorch, ONNX detections per image
    unmatched: int
    max_score_diff: float
    max_box_diff: float


@dataclass
class ParityReport:
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.unmatched == 0 and c.counts[0] == c.counts[1] for c in self.cases)

    def describe(self) -> str:
        lines = [f"{'case':<14} {'torch/onnx dets':<22} {'unmatched':>9} {'max |d score|':>13} "
                 f"{'max |d box| px':>14}"]
        for c in self.cases:
            lines.append(f"{c.name:<14} {str(c.counts[0]) + '/' + str(c.counts[1]):<22} {c.unmatched:>9} "
                         f"{c.max_score_diff:>13.2e} {c.max_box_diff:>14.2e}")
        lines.append("parity: OK" if self.ok else "parity: FAILED")
        return "\n".join(lines)


def case_inputs(canvas: tuple[int, int], valid: list[tuple[int, int]],
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Normalised noise images zero-padded to ``canvas`` (as DetDataPreprocessor pads), their shapes and
    scale factors (images taken as resized from 1.6x larger originals)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(valid), 3, *canvas)
    for row, (height, width) in enumerate(valid):
        images[row, :, :height, :width] = torch.randn(3, height, width, generator=generator)
    scale_factors = torch.full((len(valid), 2), 1 / 1.6)
    return images, torch.tensor(valid, dtype=torch.int64), scale_factors


def pytorch_detections(detector: torch.nn.Module, images, img_shapes, scale_factors) -> list[tuple]:
    """``CoDETR.predict`` (the serving path) on the same tensors: (boxes, scores, labels) per image."""
    from mmdet.structures import DetDataSample

    canvas = tuple(images.shape[-2:])
    samples = []
    for (height, width), (sw, sh) in zip(img_shapes.tolist(), scale_factors.tolist(), strict=True):
        samples.append(DetDataSample(metainfo=dict(
            img_shape=(height, width), scale_factor=(sw, sh), batch_input_shape=canvas, pad_shape=canvas,
            ori_shape=(round(height / sh), round(width / sw)))))
    with torch.no_grad():
        results = detector.predict(images, samples, rescale=True)
    found = [r.pred_instances for r in results]
    return [(p.bboxes.numpy(), p.scores.numpy(), p.labels.numpy()) for p in found]


def onnx_detections(session, images, img_shapes, scale_factors) -> list[tuple]:
    boxes, scores, labels, counts = session.run(None, {
        "images": images.numpy(), "img_shapes": img_shapes.numpy(), "scale_factors": scale_factors.numpy()})
    return [(boxes[i, :n], scores[i, :n], labels[i, :n]) for i, n in enumerate(counts.tolist())]


def match(reference: tuple, candidate: tuple, score_tol: float, box_tol: float) -> tuple[int, float, float]:
    """Greedy order-free matching; returns (unmatched reference detections, max score diff, max box diff)."""
    ref_boxes, ref_scores, ref_labels = reference
    boxes, scores, labels = candidate
    used = np.zeros(len(scores), dtype=bool)
    unmatched, worst_score, worst_box = 0, 0.0, 0.0
    for box, score, label in zip(ref_boxes, ref_scores, ref_labels, strict=True):
        score_diff = np.abs(scores - score)
        box_diff = np.abs(boxes - box).max(-1) if len(boxes) else score_diff
        ok = ~used & (labels == label) & (score_diff <= score_tol) & (box_diff <= box_tol)
        if not ok.any():
            unmatched += 1
            continue
        best = int(np.argmin(np.where(ok, score_diff + box_diff, np.inf)))
        used[best] = True
        worst_score = max(worst_score, float(score_diff[best]))
        worst_box = max(worst_box, float(box_diff[best]))
    return unmatched, worst_score, worst_box


def verify_against_pytorch(detector: torch.nn.Module, onnx_path: Path, cases: dict = CASES,
                           score_tol: float = SCORE_TOL, box_tol: float = BOX_TOL,
                           threads: int | None = None) -> ParityReport:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    report = ParityReport()
    for name, (canvas, valid) in cases.items():
        inputs = case_inputs(canvas, valid)
        expected, got = pytorch_detections(detector, *inputs), onnx_detections(session, *inputs)
        per_image = [match(e, g, score_tol, box_tol) for e, g in zip(expected, got, strict=True)]
        report.cases.append(CaseResult(
            name, ([len(e[1]) for e in expected], [len(g[1]) for g in got]), sum(p[0] for p in per_image),
            max(p[1] for p in per_image), max(p[2] for p in per_image)))
    return report
