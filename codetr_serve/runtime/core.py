"""The serving core: requests in, one batched forward, JSON out. No TorchServe here.

The shape follows LitServe's LitAPI: `setup` once, then per batch `decode` -> `predict` -> `encode`.
A bad item never fails its batch: it travels through the stages as a ServingError and comes out as its own
4xx reply, while its batch-mates get their detections.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codetr_serve.runtime import codec, decode, detections
from codetr_serve.runtime.allocator import keep_freed_memory
from codetr_serve.runtime.errors import InferenceFailed, ModelNotReady, ServingError
from codetr_serve.runtime.model_loader import LoadedDetector, build_detector, load_config
from codetr_serve.runtime.pipeline import ImagePreparer, PreparedImage
from codetr_serve.runtime.precision import (
    configure_cuda,
    deformable_attention_types,
    inference_precision,
    keep_in_fp32,
)
from codetr_serve.runtime.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass
class PendingImage:
    """A decoded, prepared image and the options its request asked for."""

    prepared: PreparedImage
    options: codec.RequestOptions
    image_size: tuple[int, int]  # (height, width) of the original image
    decode_ms: float


@dataclass
class Reply:
    """What goes back for one request: an HTTP status and a JSON-able body."""

    status: int
    body: dict[str, Any]


@dataclass
class BatchStats:
    """Per-batch figures for metrics; filled in as the batch moves through the stages."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    batch_size: int = 0
    detections_per_image: list[int] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)


Item = PendingImage | ServingError


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _inference_error(error: Exception, batch_size: int) -> InferenceFailed:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return InferenceFailed(f"out of device memory on a batch of {batch_size} images; lower batchSize "
                               "in model-config.yaml or the test_scale", cause=repr(error))
    return InferenceFailed(cause=repr(error))


def canvas_groups(prepared: Sequence[PreparedImage], divisor: int) -> dict[tuple[int, int], list[int]]:
    """Indices of images grouped by the padded canvas each would get on its own.

    The backbone's convolutions and norms see the padding, so an image padded to a bigger canvas (because a
    larger batch-mate set the batch size) gets slightly different features near its bottom/right edges.
    Batching only images that share a canvas keeps every result identical to a single-image call (and to
    the reference implementation); same-size frames, the common case, still run as one forward.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(prepared):
        height, width = item.inputs.shape[-2:]
        canvas = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
        groups.setdefault(canvas, []).append(index)
    return groups


class DetectorCore:
    """Co-DETR behind a request/response interface; build with settings, then call `setup()`."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.detector: LoadedDetector | None = None
        self.preparer: ImagePreparer | None = None
        self.last_stats = BatchStats()
        self._request_limits = codec.RequestLimits(max_bytes=settings.max_image_bytes)
        self._decode_limits = decode.DecodeLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side, min_side=settings.min_image_side)

    # -- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load config and weights onto the device, apply precision settings, warm up."""
        s = self.settings
        cfg = load_config(s.config_path)
        if s.keep_freed_memory and not keep_freed_memory():
            log.warning("keep_freed_memory: this C library has no glibc mallopt; using its defaults")
        if s.torch_threads:
            # TorchServe 0.12 has no per-model thread count: workers inherit the server's environment, so
            # several CPU workers would each take every core and slow each other down.
            torch.set_num_threads(s.torch_threads)
        if s.is_cuda:
            configure_cuda(s.cudnn_benchmark, s.tf32)
        self.detector = build_detector(cfg, s.weights_path, s.device)
        if s.fp16:
            kept = keep_in_fp32(self.detector.model, deformable_attention_types())
            log.info("fp16 autocast on; %d deformable attention modules kept in fp32", kept)
        self.preparer = ImagePreparer(cfg, s.test_scale)
        self._warm_up()

    def _warm_up(self) -> None:
        blank = np.zeros((480, 640, 3), dtype=np.uint8)
        for _ in range(self.settings.warmup_runs):
            self._forward([self._prepare(blank)])

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.detector.class_names if self.detector else ()

    # -- stages ------------------------------------------------------------------------------------------
    def decode(self, requests: Sequence[Mapping[str, Any]],
               headers: Sequence[Mapping[str, str]] | None = None) -> list[Item]:
        """Parse and decode every request (with its HTTP headers); failures become ServingErrors in place."""
        self.last_stats = BatchStats()
        start = time.perf_counter()
        headers = headers or [{}] * len(requests)
        items = [self._decode_one(request, h) for request, h in zip(requests, headers, strict=True)]
        self.last_stats.preprocess_ms = _elapsed_ms(start)
        return items

    def _decode_one(self, request: Mapping[str, Any], headers: Mapping[str, str]) -> Item:
        start = time.perf_counter()
        try:
            parsed = codec.parse_request(request, self._request_limits, headers)
            image = decode.decode_image(parsed.image_bytes, self._decode_limits)
            prepared = self._prepare(image)
        except ServingError as error:
            self.last_stats.rejected[error.code] += 1
            return error
        except Exception as error:  # noqa: BLE001 - one odd input must not fail its batch-mates
            log.exception("unexpected failure preparing one input")
            return InferenceFailed("the server failed to prepare this image; report it with the image",
                                   cause=repr(error))
        return PendingImage(prepared, parsed.options, tuple(image.shape[:2]), _elapsed_ms(start))

    def _prepare(self, image_bgr: np.ndarray) -> PreparedImage:
        if self.preparer is None:
            raise ModelNotReady()
        return self.preparer(image_bgr)

    def predict(self, items: Sequence[Item]) -> list[Any]:
        """One forward over every good item; errors pass through at their positions."""
        good = [item for item in items if isinstance(item, PendingImage)]
        self.last_stats.batch_size = len(good)
        if not good:
            return list(items)
        start = time.perf_counter()
        try:
            outputs = iter(self._forward([item.prepared for item in good]))
        except Exception as error:  # noqa: BLE001 - answer every item with JSON rather than a bare 503
            log.exception("forward failed on a batch of %d", len(good))
            outputs = iter([_inference_error(error, len(good))] * len(good))
        self.last_stats.inference_ms = _elapsed_ms(start)
        return [next(outputs) if isinstance(item, PendingImage) else item for item in items]

    def _forward(self, prepared: Sequence[PreparedImage]) -> list[Any]:
        """Detections per image, in order; one forward per padded-shape group (see `canvas_groups`)."""
        if self.detector is None:
            raise ModelNotReady()
        results: list[Any] = [None] * len(prepared)
        for indices in canvas_groups(prepared, self.detector.pad_size_divisor).values():
            outputs = self._forward_group([prepared[i] for i in indices])
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results

    def _forward_group(self, prepared: Sequence[PreparedImage]) -> list[Any]:
        model = self.detector.model
        batch = {"inputs": [p.inputs for p in prepared], "data_samples": [p.data_sample for p in prepared]}
        with inference_precision(self.settings.device, self.settings.fp16):
            batch = model.data_preprocessor(batch, False)  # normalise + pad on the model's device
            samples = model.predict(batch["inputs"], batch["data_samples"], rescale=True)
        return [sample.pred_instances for sample in samples]

    def encode(self, items: Sequence[Item], outputs: Sequence[Any]) -> list[Reply]:
        """Turn each output (or error) into a Reply."""
        start = time.perf_counter()
        replies = [self._encode_one(item, output) for item, output in zip(items, outputs, strict=True)]
        self.last_stats.postprocess_ms = _elapsed_ms(start)
        return replies

    def _encode_one(self, item: Item, output: Any) -> Reply:
        if isinstance(output, ServingError):
            return Reply(output.status, output.to_dict())
        options, s = item.options, self.settings
        body = detections.build_response(
            boxes=output.bboxes.float().cpu().numpy(), scores=output.scores.float().cpu().numpy(),
            labels=output.labels.cpu().numpy(), class_names=self.class_names, image_size=item.image_size,
            score_threshold=s.score_threshold if options.score_threshold is None else options.score_threshold,
            max_detections=self._max_detections(options),
            model=detections.ModelInfo(name=s.model_name, version=s.model_version),
            timings_ms={"decode": item.decode_ms, "inference": self.last_stats.inference_ms})
        self.last_stats.detections_per_image.append(len(body["detections"]))
        return Reply(200, body)

    def _max_detections(self, options: codec.RequestOptions) -> int:
        wanted = self.settings.max_detections if options.max_detections is None else options.max_detections
        return min(wanted, self.detector.max_per_img if self.detector else wanted)

    def handle(self, requests: Sequence[Mapping[str, Any]],
               headers: Sequence[Mapping[str, str]] | None = None) -> list[Reply]:
        """The whole loop for one batch (what the handler does, in one call; used by tests and benchmarks)."""
        items = self.decode(requests, headers)
        return self.encode(items, self.predict(items))
