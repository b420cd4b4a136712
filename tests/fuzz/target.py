"""Fuzz target: one HTTP body through every stage of the request path that needs no model.

codec and protocol (raw / JSON / text / multipart / KServe envelopes) -> decode (header, limits, pixels) ->
preparation (the model config's test pipeline), driven through ``DetectorCore.decode`` exactly as the
handler calls it.

Invariant, per body and for each way TorchServe 0.12 could hand it to the handler: every item that comes
out is a prepared image within the limits or a ServingError with a 4xx status and a message of ours (no
object repr, no traceback, no exception class name); nothing else escapes; one request takes at most
``TIME_BOUND_S``. A violation raises :class:`FuzzFinding`.

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
_MAX_MESSAGE = 1000
_MAX_PARTS = 64


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
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.model_loader import load_config
    from codetr_serve.runtime.pipeline import ImagePreparer
    from codetr_serve.runtime.settings import build_settings

    settings = build_settings(FUZZ_LIMITS, model_dir=Path(tempfile.gettempdir()), device="cpu")
    core = DetectorCore(settings)
    core.preparer = ImagePreparer(load_config(TINY_CONFIG), settings.test_scale)
    return core


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


def check_body(body: bytes) -> list[Outcome]:
    """Run ``body`` through the request path every way it can arrive; raise FuzzFinding on a violation."""
    core = serving_core()
    outcomes = []
    for delivery, request in deliveries(body):
        start = time.monotonic()
        items = core.decode([request], [{}])
        elapsed = time.monotonic() - start
        if elapsed > TIME_BOUND_S:
            raise FuzzFinding(f"{delivery}: one request took {elapsed:.1f} s (bound {TIME_BOUND_S} s)")
        results = [_check_item(delivery, image, core) for item in items for image in _images(item)]
        outcomes.append(Outcome(delivery, tuple(results)))
    return outcomes


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
