"""Fuzz target: one HTTP request through every stage of the request path that needs no model.

protocol and codec (headers; raw / JSON / text / multipart bodies; KServe v1, v2 JSON and v2 binary
tensors) -> decode (header, limits, pixels) -> preparation (the model config's test pipeline), driven
through ``DetectorCore.decode`` exactly as the handler calls it.

An input is a body, optionally led by request headers: ``%headers`` and a newline, ``Name: value`` lines,
a blank line, then the body (see :func:`split_headers`); the seeds that test headers are written so.

Invariants, per input and for each way TorchServe 0.12 could hand the body to the handler: every item that
comes out is a prepared image within the limits or a ServingError with a 4xx status and a short message
of ours (no object repr, no traceback, no exception class name, no long echo of the input); nothing else
escapes; one request takes at most ``TIME_BOUND_S``. And no foreign pixels: decoding the body right after
decoding a different image of the same size gives the array decoding it gave before, or a refusal
(issue 19: a truncated MPO once came back holding the previous request's pixels). A violation raises
:class:`FuzzFinding`.

Two users: ``make fuzz`` runs this module under atheris (coverage-guided libFuzzer, Python coverage of our
runtime and of Pillow's parsers), and tests/unit/test_fuzz_corpus.py replays the seed corpus and every
file in crashers/ through :func:`check_body` in CI.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY_CONFIG = REPO / "config" / "co_dino_tiny.py"
#: A hang bound, not a speed target: the slowest seed takes well under a second.
TIME_BOUND_S = 10.0
#: Smaller than the serving defaults so the fuzzer does not spend its budget decoding 40 MP canvases that a
#: 1 KB header can legally ask for; the limit checks are the same code at any setting.
#: Sides keep the serving default (16384) so extreme aspect ratios stay reachable.
FUZZ_LIMITS = {"max_image_pixels": 2_000_000, "max_image_side": 16_384, "min_image_side": 8}
_LEAK = re.compile(r"object at 0x|Traceback|File \"|<[\w.]+ object|\b\w+(Error|Exception)\b")
#: Our longest messages (MissingImage listing ten cut field names) stay under ~900 characters; client input
#: in one is cut to errors.MAX_ECHO_CHARS, so nothing a client sends can make one longer.
_MAX_MESSAGE = 1000
_MAX_PARTS = 64
HEADERS_MARK = b"%headers\n"
_MAX_HEADERS = 16
#: Seeds of the victim images decoded before a body is decoded again (noise, so any reuse shows).
VICTIM_SEEDS = (1, 2)


class FuzzFinding(AssertionError):
    """The request path broke its contract on this input."""


@dataclass(frozen=True)
class Outcome:
    """What one way of delivering the body produced: ``image HxW`` or the error code, per item."""

    delivery: str
    results: tuple[str, ...]


@functools.cache
def serving_core() -> Any:
    """A DetectorCore with the tiny config's preparation pipeline and no model (decode needs none)."""
    from codetr_serve.runtime.allocator import keep_freed_memory
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.model_loader import load_config
    from codetr_serve.runtime.pipeline import ImagePreparer
    from codetr_serve.runtime.settings import build_settings

    settings = build_settings(FUZZ_LIMITS, model_dir=Path(tempfile.gettempdir()), device="cpu")
    core = DetectorCore(settings)
    core.preparer = ImagePreparer(load_config(TINY_CONFIG), settings.test_scale)
    if settings.keep_freed_memory:
        keep_freed_memory()  # as the worker's setup() does: freed buffers stay in the heap to be reused
    return core


def split_headers(data: bytes) -> tuple[dict[str, str], bytes]:
    """``%headers\\nName: value\\n...\\n\\nbody`` -> (headers, body); other inputs are all body.

    Values are latin-1 text, as HTTP header bytes reach the handler; at most _MAX_HEADERS are kept."""
    if not data.startswith(HEADERS_MARK):
        return {}, data
    head, blank, body = data[len(HEADERS_MARK):].partition(b"\n\n")
    if not blank:
        return {}, data
    headers: dict[str, str] = {}
    for line in head.split(b"\n")[:_MAX_HEADERS]:
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            headers[name.strip().decode("latin-1")] = value.strip().decode("latin-1")
    return headers, body


def multipart_fields(body: bytes) -> dict[str, bytearray] | None:
    """The form fields TorchServe would pass for a multipart/form-data body, or None if it is not one."""
    if not body.startswith(b"--"):
        return None
    boundary = body[2:].split(b"\r\n", 1)[0]
    if not boundary or len(boundary) > 200:
        return None
    fields: dict[str, bytearray] = {}
    for part in body.split(b"--" + boundary)[1:_MAX_PARTS]:
        head, sep, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if sep and name:
            fields[name.group(1).decode("utf-8", "replace")] = bytearray(value.removesuffix(b"\r\n"))
    return fields or None


def deliveries(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Each request dict TorchServe 0.12 could build from ``body``, depending on the Content-Type sent.

    application/json: ``json.loads`` with any failure (RecursionError included) falling back to the bytes
    (ts/protocol/otf_message_handler.py); text/*: UTF-8 text, else bytes; anything else: bytes.
    """
    found: list[tuple[str, dict[str, Any]]] = [("raw", {"body": bytearray(body)})]
    fields = multipart_fields(body)
    if fields:
        found.append(("multipart", fields))
    try:
        found.append(("json", {"body": json.loads(body.decode("utf-8"))}))
    except Exception:  # noqa: BLE001, S110 - TorchServe forwards the bytes then: that is the "raw" case
        pass
    try:
        found.append(("text", {"body": body.decode("utf-8")}))
    except UnicodeDecodeError:
        pass
    return found


def check_body(data: bytes) -> list[Outcome]:
    """Run one input (headers and body) through the request path every way the body can arrive, then
    the foreign-pixel check; raise FuzzFinding on a violation."""
    core = serving_core()
    headers, body = split_headers(data)
    outcomes = []
    for delivery, request in deliveries(body):
        start = time.monotonic()
        items = core.decode([request], [headers])
        elapsed = time.monotonic() - start
        if elapsed > TIME_BOUND_S:
            raise FuzzFinding(f"{delivery}: one request took {elapsed:.1f} s (bound {TIME_BOUND_S} s)")
        results = [_check_item(delivery, image, core) for item in items for image in _images(item)]
        outcomes.append(Outcome(delivery, tuple(results)))
    check_no_foreign_pixels(body)
    return outcomes


def check_no_foreign_pixels(body: bytes) -> None:
    """Decode ``body``; if it is an image, decode a victim of its size, then ``body`` again: the second
    array must equal the first (or the body be refused). Any difference is memory the decoder did not
    write: another request's pixels in production."""
    from codetr_serve.runtime.decode import decode_image
    from codetr_serve.runtime.errors import ServingError

    limits = serving_core()._decode_limits
    try:
        alone = decode_image(body, limits)
    except ServingError:
        return
    for seed in VICTIM_SEEDS:
        victim = victim_image(alone.shape[0], alone.shape[1], seed)
        decode_image(victim, limits)  # decoded and freed: its buffers are what the next decode may get
        try:
            again = decode_image(body, limits)
        except ServingError:
            continue  # a refusal is always allowed
        if not np.array_equal(again, alone):
            height, width = alone.shape[:2]
            changed = int(np.any(again != alone, axis=2).sum()) if again.shape == alone.shape else "all"
            raise FuzzFinding(f"raw: decoded after a {width}x{height} victim, the image differs from its "
                              f"decode alone in {changed} of {height * width} pixels: foreign memory in a "
                              "decoded array")


@functools.lru_cache(maxsize=16)
def victim_image(height: int, width: int, seed: int) -> bytes:
    """A noise BMP of the given size (BMP: exact and fast both ways)."""
    import cv2

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".bmp", pixels)[1].tobytes()


def _images(item: Any) -> list[Any]:
    """A request refused as a whole is one result; a parsed request contributes one per image it carries."""
    from codetr_serve.runtime.batch import RequestItem

    return list(item.images) if isinstance(item, RequestItem) else [item]


def _check_item(delivery: str, item: Any, core: Any) -> str:
    from codetr_serve.runtime.batch import PendingImage
    from codetr_serve.runtime.errors import ServingError

    if isinstance(item, ServingError):
        _check_error(delivery, item)
        return item.code
    if not isinstance(item, PendingImage):
        raise FuzzFinding(f"{delivery}: decode produced a {type(item).__name__}")
    height, width = item.image_size
    s = core.settings
    inputs = item.prepared.inputs
    if not (s.min_image_side <= min(height, width) and max(height, width) <= s.max_image_side
            and height * width <= s.max_image_pixels):
        raise FuzzFinding(f"{delivery}: a {width}x{height} image passed the limits")
    if inputs.ndim != 3 or inputs.shape[0] != 3 or str(inputs.dtype) != "torch.uint8":
        raise FuzzFinding(f"{delivery}: prepared input has shape {tuple(inputs.shape)} {inputs.dtype}")
    return f"image {height}x{width}"


def _check_error(delivery: str, error: Any) -> None:
    body = json.dumps(error.to_dict())
    where = f"{delivery}: {error.status} {error.code}: {error.message!r}"
    if not 400 <= error.status < 500:
        raise FuzzFinding(f"{where} (cause: {error.details.get('cause')})")
    if _LEAK.search(error.message) or len(error.message) > _MAX_MESSAGE:
        raise FuzzFinding(f"{where} leaks internals or is too long")
    if json.loads(body) != error.to_dict():
        raise FuzzFinding(f"{where} does not survive JSON")


def test_one_input(data: bytes) -> None:
    check_body(bytes(data))


def main(argv: list[str]) -> None:
    """``python -m tests.fuzz.target [libFuzzer flags] CORPUS_DIR...`` (see ``make fuzz``)."""
    import atheris

    logging.basicConfig(level=logging.CRITICAL)  # the catch-all's log lines would drown libFuzzer's
    with atheris.instrument_imports(include=["codetr_serve.runtime", "PIL"]):
        from PIL import Image

        Image.init()  # Pillow imports its format plugins lazily: import them here, instrumented
        serving_core()
    import cv2

    cv2.setLogLevel(0)  # libtiff/libpng warnings on stderr for every malformed file
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
