"""A handled batch leaves no reference cycles behind, whatever its requests got wrong.

Python frees cyclic garbage only when its collector runs, and a worker with a large model runs the full
collection rarely. Garbage that holds a batch's request bodies and image tensors therefore piles up: the
30-minute soak (`make soak`) grew the worker by ~2.5 MB/min from refused requests whose kept errors still
held their tracebacks. These tests count what the collector finds after one batch.
"""

from __future__ import annotations

import base64
import gc
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.errors import InvalidJSON, ServingError
from codetr_serve.runtime.settings import build_settings
from tests.conftest import encode_image

JPEG = encode_image(96, 64, "JPEG", seed=1)
PNG = encode_image(80, 60, "PNG", seed=2)


def float_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).random((24, 32), np.float32)).save(buffer, "TIFF")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (request, headers) pairs; every batch below also carries one good image, so the forward runs.
REFUSED = {
    "deep_json": ({"body": bytearray(b'{"image": ' * 3000 + b'"x"' + b"}" * 3000)},
                  {"Content-Type": "application/json"}),
    "invalid_json": ({"body": bytearray(b'{"image": "abc"')}, {"Content-Type": "application/json"}),
    "bad_base64": ({"body": {"image": "not base64 at all!"}}, {"Content-Type": "application/json"}),
    "truncated_jpeg": ({"body": bytearray(JPEG[: len(JPEG) // 2])}, {"Content-Type": "image/jpeg"}),
    "empty": ({"body": bytearray()}, {"Content-Type": "image/jpeg"}),
    "float_tiff": ({"body": bytearray(float_tiff())}, {"Content-Type": "image/tiff"}),
    "too_thin": ({"body": bytearray(encode_image(400, 4, "PNG"))}, {"Content-Type": "image/png"}),
    "kserve_v1_bad_instance": ({"body": {"instances": [{"b64": b64(JPEG)}, {"b64": "%%%"}]}},
                               {"Content-Type": "application/json"}),
    "kserve_v2_bad_element": ({"body": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                                     "data": [b64(PNG), "%%%"]}]}},
                              {"Content-Type": "application/json"}),
}
GOOD = ({"body": bytearray(JPEG)}, {"Content-Type": "image/jpeg"})


@pytest.fixture(scope="module")
def core(tiny_model_dir) -> DetectorCore:
    detector = DetectorCore(build_settings({"warmup_runs": 0, "decode_threads": 2}, model_dir=tiny_model_dir,
                                           device="cpu"))
    detector.setup()
    return detector


def cyclic_garbage_after(action) -> Counter:
    """Types of the objects only the cycle collector could free, left behind by `action()`."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds in gc.garbage so we can name it
    try:
        action()
        gc.collect()
        return Counter(type(thing).__name__ for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_batch_of_good_images_leaves_no_cycles(core):
    batch = [GOOD, ({"body": bytearray(PNG)}, {"Content-Type": "image/png"})]
    assert cyclic_garbage_after(lambda: core.handle(*map(list, zip(*batch, strict=True)))) == Counter()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_request_leaves_no_cycles_holding_its_batch(core, name):
    batch = [REFUSED[name], GOOD]
    replies = []
    garbage = cyclic_garbage_after(lambda: replies.extend(core.handle(*map(list, zip(*batch, strict=True)))))
    assert replies[1].status == 200
    assert replies[0].status >= 400 or "error" in json.dumps(replies[0].body)
    assert garbage == Counter(), f"{name}: cyclic garbage after the batch: {dict(garbage)}"


def test_detached_drops_the_tracebacks_of_the_error_and_its_causes():
    def parse():
        try:
            json.loads("{")
        except ValueError as exc:
            raise InvalidJSON("The body is not valid JSON; send an object.") from exc

    with pytest.raises(ServingError) as caught:
        parse()
    error = caught.value
    assert error.__traceback__ is not None and error.__cause__.__traceback__ is not None
    assert error.detached() is error
    assert error.__traceback__ is None and error.__cause__.__traceback__ is None
    assert error.to_dict()["error"]["message"] == "The body is not valid JSON; send an object."
