"""The serving core: requests in, batched forwards (one per padded canvas size), JSON out. No TorchServe here.

The shape follows LitServe's LitAPI: `setup` once, then per batch `decode` -> `predict` -> `encode`.
A bad item never fails its batch: it travels through the stages as a ServingError and comes out as its own
4xx reply, while its batch-mates get their detections.

One request may carry several images (KServe v1/v2, see `protocol`): the batch's images are flattened into
the forward and regrouped per request, and a bad image is an error inside its request's reply.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from codetr_serve.ops.msda import configure_cpu_msda
from codetr_serve.runtime import codec, decode, detections, protocol
from codetr_serve.runtime.allocator import keep_freed_memory
from codetr_serve.runtime.batch import (
    BatchStats,
    ImageItem,
    Item,
    PendingImage,
    Reply,
    RequestItem,
    canvas_groups,
    trace_replies,
)
from codetr_serve.runtime.errors import InferenceFailed, ModelNotReady, ServingError
from codetr_serve.runtime.model_loader import LoadedDetector, build_detector, load_config
from codetr_serve.runtime.pipeline import ImagePreparer, PreparedImage
from codetr_serve.runtime.precision import (
    configure_cuda,
    deformable_attention_types,
    inference_precision,
    keep_decoding_in_fp32,
    keep_in_fp32,
)
from codetr_serve.runtime.settings import ServingSettings

log = logging.getLogger(__name__)


def decode_cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count, inside containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _inference_error(error: Exception, batch_size: int) -> InferenceFailed:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return InferenceFailed(f"out of device memory on a batch of {batch_size} images; lower batchSize "
                               "in model-config.yaml or the test_scale", cause=repr(error))
    return InferenceFailed(cause=repr(error))


class DetectorCore:
    """Co-DETR behind a request/response interface; build with settings, then call `setup()`."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.detector: LoadedDetector | None = None
        self.preparer: ImagePreparer | None = None
        self.last_stats = BatchStats()
        self.cpu_msda_path: str | None = None  # "op" or "fallback" on CPU workers, after setup()
        self._decode_threads = settings.decode_threads or min(4, decode_cpu_count())
        self._decode_pool: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self._encoded_at: float | None = None  # perf_counter when the previous batch's replies were ready
        self._request_ids: list[str] = []  # the current batch's, one per request (see `decode`)
        self._wires: list[protocol.WireProtocol] = []  # the protocol each request answers in
        self._request_limits = codec.RequestLimits(max_bytes=settings.max_image_bytes,
                                                   max_detections_limit=settings.max_detections_limit,
                                                   max_images=settings.max_images_per_request)
        self._decode_limits = decode.DecodeLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side, min_side=settings.min_image_side)

    # -- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load config and weights onto the device, apply precision settings, warm up."""
        s = self.settings
        logging.getLogger("codetr_serve").setLevel(s.log_level)  # the worker's root logger stays at INFO
        decode.quiet_decoder_warnings()
        cfg = load_config(s.config_path)
        if s.keep_freed_memory and not keep_freed_memory():
            log.warning("keep_freed_memory: this C library has no glibc mallopt; using its defaults")
        if s.torch_threads:
            # TorchServe 0.12 has no per-model thread count: workers inherit the server's environment, so
            # several CPU workers would each take every core and slow each other down.
            torch.set_num_threads(s.torch_threads)
        if s.is_cuda:
            configure_cuda(s.cudnn_benchmark, s.tf32)
        else:
            # mmcv has no CPU kernel for deformable attention: route it to our compiled op when built.
            self.cpu_msda_path = configure_cpu_msda(s.cpu_msda)
        self.detector = build_detector(cfg, s.weights_path, s.device)
        if s.fp16:
            kept = keep_in_fp32(self.detector.model, deformable_attention_types())
            decoders = keep_decoding_in_fp32(self.detector.model)
            log.info("fp16 autocast on; %d deformable attention modules and %d box-decoding methods kept in "
                     "fp32", kept, decoders)
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
               headers: Sequence[Mapping[str, str]] | None = None,
               request_ids: Sequence[str | None] | None = None) -> list[Item]:
        """Parse every request (with its HTTP headers), then decode all their images; failures become
        ServingErrors in place: a whole request's when its envelope is unusable, else one image's.

        `request_ids` are the front end's own ids (TorchServe's), used when a request has no valid
        X-Request-ID (see `codec.request_id`); `encode` puts each request's id into its reply."""
        start = time.perf_counter()
        waited = None if self._encoded_at is None else (start - self._encoded_at) * 1000.0
        self.last_stats = BatchStats(wait_ms=waited)
        headers = headers or [{}] * len(requests)
        fallbacks = request_ids or [None] * len(requests)
        self._request_ids = [codec.request_id(h, fb) for h, fb in zip(headers, fallbacks, strict=True)]
        parsed = [self._parse_one(request, h) for request, h in zip(requests, headers, strict=True)]
        items, self._wires = [item for item, _ in parsed], [wire for _, wire in parsed]
        pairs = [(parsed, item.parse_ms / len(item.envelope.items)) for item in items
                 if isinstance(item, RequestItem) for parsed in item.envelope.items]
        if self._decode_threads > 1 and len(pairs) > 1:
            # OpenCV and torch release the GIL while decoding and resizing: a batch's images decode in
            # parallel, so decoding never leaves a GPU waiting. map() keeps each item at its position.
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="decode")
            images = iter(list(self._decode_pool.map(lambda pair: self._decode_one(*pair), pairs)))
        else:
            images = iter([self._decode_one(*pair) for pair in pairs])
        for item in items:
            if isinstance(item, RequestItem):
                item.images = [next(images) for _ in item.envelope.items]
        self.last_stats.preprocess_ms = _elapsed_ms(start)
        return items

    def _parse_one(self, request: Mapping[str, Any],
                   headers: Mapping[str, str]) -> tuple[Item, protocol.WireProtocol]:
        """The request's envelope (its images and options), or the error the whole request gets; and the
        protocol its reply is written in (the default one when not even the body could be read)."""
        start, wire = time.perf_counter(), protocol.DEFAULT
        try:
            wire, body = protocol.read_request(request, headers)
            envelope = wire.parse(request, body, headers, self._request_limits)
        except ServingError as error:
            with self._stats_lock:
                self.last_stats.rejected[error.code] += 1
            return error.detached(), wire
        except Exception as error:  # noqa: BLE001 - one odd request must not fail its batch-mates
            log.exception("unexpected failure parsing one request")
            return InferenceFailed("the server failed to read this request; report it with the request",
                                   cause=repr(error)), wire
        return RequestItem(envelope, parse_ms=_elapsed_ms(start)), wire

    def _decode_one(self, parsed: protocol.ImageItem, parse_ms: float = 0.0) -> ImageItem:
        """One image of a parsed request -> decoded and prepared; `parse_ms`: its share of the parse time."""
        if isinstance(parsed, ServingError):  # the protocol already refused this image
            with self._stats_lock:
                self.last_stats.rejected[parsed.code] += 1
            return parsed
        start = time.perf_counter()
        try:
            image = decode.decode_image(parsed.image_bytes, self._decode_limits)
            prepared = self._prepare(image)
        except ServingError as error:
            with self._stats_lock:  # decode threads share the counter
                self.last_stats.rejected[error.code] += 1
            return error.detached()
        except Exception as error:  # noqa: BLE001 - one odd input must not fail its batch-mates
            log.exception("unexpected failure preparing one input")
            return InferenceFailed("the server failed to prepare this image; report it with the image",
                                   cause=repr(error))
        return PendingImage(prepared, parsed.options, tuple(image.shape[:2]), parse_ms + _elapsed_ms(start))

    def _prepare(self, image_bgr: np.ndarray) -> PreparedImage:
        if self.preparer is None:
            raise ModelNotReady()
        return self.preparer(image_bgr)

    def predict(self, items: Sequence[Item]) -> list[Any]:
        """Forwards over the good images of every request (one per canvas group), regrouped per request: a
        list of outputs aligned with each request's images (errors in place), or the request's error."""
        good = [image for item in items if isinstance(item, RequestItem)
                for image in item.images if isinstance(image, PendingImage)]
        self.last_stats.batch_size = len(good)
        outputs = iter(self._forward_images(good) if good else ())
        return [item if isinstance(item, ServingError) else
                [next(outputs) if isinstance(image, PendingImage) else image for image in item.images]
                for item in items]

    def _forward_images(self, good: Sequence[PendingImage]) -> list[Any]:
        start = time.perf_counter()
        try:
            outputs = self._forward([image.prepared for image in good])
        except Exception as error:  # noqa: BLE001 - answer every item with JSON rather than a bare 503
            log.exception("forward failed on a batch of %d images (request_ids=%s)", len(good),
                          ",".join(self._request_ids))
            outputs = [_inference_error(error, len(good))] * len(good)
        self.last_stats.inference_ms = _elapsed_ms(start)
        return outputs

    def _forward(self, prepared: Sequence[PreparedImage]) -> list[Any]:
        """Detections per image, in order; one forward per padded-shape group (see `canvas_groups`)."""
        if self.detector is None:
            raise ModelNotReady()
        results: list[Any] = [None] * len(prepared)
        for indices in canvas_groups(prepared, self.detector.pad_size_divisor).values():
            try:
                outputs = self._forward_group([prepared[i] for i in indices])
            except Exception as error:  # noqa: BLE001 - a failing canvas group fails only its own images
                log.exception("forward failed on a group of %d images (request_ids=%s)", len(indices),
                              ",".join(self._request_ids))
                outputs = [_inference_error(error, len(indices))] * len(indices)
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
        if len(outputs) != len(items):  # a bug upstream: nobody can tell which output is whose
            log.error("predict returned %d outputs for %d items", len(outputs), len(items))
            failed = InferenceFailed("the model returned the wrong number of results for this batch; retry, "
                                     "and report it if it persists")
            outputs = [failed] * len(items)
        wires = self._wires if len(self._wires) == len(items) else [protocol.DEFAULT] * len(items)
        replies = [self._encode_request(item, output, wire)
                   for item, output, wire in zip(items, outputs, wires, strict=True)]
        trace_replies(items, replies, self._request_ids)
        self.last_stats.postprocess_ms = _elapsed_ms(start)
        self._encoded_at = time.perf_counter()
        return replies

    def _encode_request(self, item: Item, outputs: Any, wire: protocol.WireProtocol) -> Reply:
        """One request's reply: each image through `_encode_guarded`, wrapped by the request's protocol.

        A request refused as a whole (a ServingError) is answered in its protocol's error shape; a bare
        image (tests, tools) like /predictions."""
        if isinstance(item, ServingError):
            return Reply(*wire.refuse(item))
        if not isinstance(item, RequestItem):
            return self._encode_guarded(item, outputs)
        if isinstance(outputs, ServingError):  # the whole batch failed (see `encode`)
            outputs = [outputs] * len(item.images)
        try:
            answers = [self._encode_guarded(image, output)
                       for image, output in zip(item.images, outputs, strict=True)]
            s = self.settings
            return Reply(*item.envelope.format(answers, detections.ModelInfo(s.model_name, s.model_version)))
        except Exception as error:  # noqa: BLE001 - the per-item guarantee holds in every stage
            log.exception("building the response for one request failed")
            failed = InferenceFailed("the server failed to build the response for this request; retry, and "
                                     "report it if it persists", cause=repr(error))
            return Reply(*item.envelope.refuse(failed))

    def _encode_guarded(self, item: ImageItem, output: Any) -> Reply:
        """`_encode_one`, but a failure building one reply answers that item only (never its batch-mates)."""
        try:
            return self._encode_one(item, output)
        except Exception as error:  # noqa: BLE001 - the per-item guarantee holds in every stage
            log.exception("building the response for one image failed")
            failed = InferenceFailed("the server failed to build the response for this image; retry, and "
                                     "report it with the image if it persists", cause=repr(error))
            return Reply.error(failed)

    def _encode_one(self, item: ImageItem, output: Any) -> Reply:
        if isinstance(output, ServingError):
            return Reply.error(output)
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
