"""What travels through a batch between the core's stages: items, replies, statistics, canvas groups, and
the log line each refused input gets.

`decode` turns each request into a RequestItem (or the ServingError the whole request gets); its images
are PendingImages (or their own ServingErrors); `encode` turns each request into one Reply.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codetr_serve.runtime import codec, protocol
from codetr_serve.runtime.errors import ServingError
from codetr_serve.runtime.pipeline import PreparedImage

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
    """What goes back for one request: an HTTP status, a JSON-able body, the status line's reason phrase."""

    status: int
    body: dict[str, Any]
    reason: str = "OK"

    @classmethod
    def error(cls, error: ServingError) -> Reply:
        """Our own error shape (one image's answer, or a /predictions request's reply)."""
        return cls(error.status, error.to_dict(), error.code)

    def wire_body(self) -> bytes:
        """The body as it goes on the wire: compact JSON (`codec.dumps_json`)."""
        return codec.dumps_json(self.body)


@dataclass
class BatchStats:
    """Per-batch figures for metrics; filled in as the batch moves through the stages."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    batch_size: int = 0
    # From the previous batch's replies being encoded to this batch's decode: under load, the front end's
    # turnaround; None for a worker's first batch.
    wait_ms: float | None = None
    detections_per_image: list[int] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)


ImageItem = PendingImage | ServingError


@dataclass
class RequestItem:
    """One request whose envelope parsed: its protocol and echo fields, and one entry per image it carries
    (filled in by `decode`, in the envelope's order)."""

    envelope: protocol.Envelope
    images: list[ImageItem] = field(default_factory=list)
    parse_ms: float = 0.0  # parsing the envelope (base64 included), shared among the images' decode times


Item = RequestItem | ServingError


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


def trace_replies(items: Sequence[Item], replies: Sequence[Reply], request_ids: Sequence[str]) -> None:
    """Put each request's id into its reply and log every refused input with it, so a user's bug report
    leads to a log line: one INFO line per rejected input (WARNING for a server fault), none per success
    unless log_level is DEBUG. Without one id per item (encode called without decode: tests, tools) each
    request gets a fresh id."""
    if len(request_ids) != len(items):
        request_ids = [codec.request_id({}) for _ in items]
    for item, reply, rid in zip(items, replies, request_ids, strict=True):
        reply.body["request_id"] = rid
        images = item.images if isinstance(item, RequestItem) else []
        refused = [reply.body.get("error")] if reply.status >= 400 else [
            image.to_dict()["error"] for image in images if isinstance(image, ServingError)]
        for error in refused:
            error = error if isinstance(error, Mapping) else {"message": error, "code": reply.reason}
            status = error.get("status", reply.status)
            log.log(logging.INFO if status < 500 else logging.WARNING, "refused request_id=%s status=%s "
                    "code=%s: %s", rid, status, error.get("code", "-"), error.get("message", ""))
        if not refused:
            log.debug("served request_id=%s", rid)
