"""A batch's images decode in parallel threads, and every item keeps its own place, result and error."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from codetr_serve.runtime import core as core_module
from codetr_serve.runtime import decode
from codetr_serve.runtime.batch import PendingImage
from codetr_serve.runtime.core import DetectorCore
from codetr_serve.runtime.errors import InferenceFailed, ServingError
from codetr_serve.runtime.model_loader import load_config
from codetr_serve.runtime.pipeline import ImagePreparer
from codetr_serve.runtime.settings import SettingsError, build_settings
from tests.conftest import TINY_CONFIG, encode_image

SIZES = [(320, 240), (200, 300), (640, 360), (96, 64), (300, 200), (128, 128), (480, 270), (250, 250)]


def make_core(threads: int) -> DetectorCore:
    """A core that can decode and prepare (the tiny config's pipeline) without building a model."""
    core = DetectorCore(build_settings({"decode_threads": threads}, model_dir="/unused", device="cpu"))
    core.preparer = ImagePreparer(load_config(TINY_CONFIG))
    return core


def batch() -> list[dict]:
    """Good images of different sizes with bad items between them."""
    requests = [{"body": encode_image(w, h, seed=i)} for i, (w, h) in enumerate(SIZES)]
    requests.insert(1, {"body": b""})                                # empty_input
    requests.insert(4, {"nothing": b"x"})                            # missing_image
    requests.insert(7, {"body": b"\x89PNG\r\n\x1a\n broken"})        # undecodable_image
    requests.append({"body": encode_image(4, 4, fmt="PNG")})        # image_too_small
    return requests


def flat(items: list) -> list:
    """Every image's outcome in request order: a request-level error, or each of the request's images."""
    out = []
    for item in items:
        images = getattr(item, "images", None)  # a parsed request carries its images' outcomes
        out += [item] if images is None else images
    return out


def summary(items: list) -> list:
    return [(item.image_size, tuple(item.prepared.inputs.shape)) if isinstance(item, PendingImage)
            else item.code for item in flat(items)]


def test_parallel_decode_keeps_order_results_and_per_item_errors():
    requests = batch()
    serial, parallel = make_core(1), make_core(4)
    expected = serial.decode(requests)
    items = parallel.decode(requests)

    assert summary(items) == summary(expected)
    codes = [item.code for item in flat(items) if isinstance(item, ServingError)]
    assert codes == ["empty_input", "missing_image", "undecodable_image", "image_too_small"]
    sizes = [item.image_size for item in flat(items) if isinstance(item, PendingImage)]
    assert sizes == [(h, w) for w, h in SIZES]  # each image at its own position
    for ours, theirs in zip(flat(items), flat(expected), strict=True):
        if isinstance(ours, PendingImage):
            assert torch.equal(ours.prepared.inputs, theirs.prepared.inputs)
    assert dict(parallel.last_stats.rejected) == dict(serial.last_stats.rejected) == {
        "empty_input": 1, "missing_image": 1, "undecodable_image": 1, "image_too_small": 1}


def test_decode_really_runs_on_several_threads(monkeypatch):
    original = decode.decode_image
    threads: set[str] = set()
    lock = threading.Lock()

    def slow_decode(data, limits):
        with lock:
            threads.add(threading.current_thread().name)
        time.sleep(0.1)  # stands in for a big JPEG: OpenCV releases the GIL the same way
        return original(data, limits)

    monkeypatch.setattr(decode, "decode_image", slow_decode)
    core = make_core(4)
    requests = [{"body": encode_image(64, 48, seed=i)} for i in range(8)]
    start = time.perf_counter()
    items = flat(core.decode(requests))
    elapsed = time.perf_counter() - start
    assert len(items) == 8 and all(isinstance(item, PendingImage) for item in items)
    assert len(threads) >= 2 and all(name.startswith("decode") for name in threads), threads
    assert elapsed < 0.6, f"8 x 100 ms on 4 threads took {elapsed:.2f} s: not parallel"


def test_an_unexpected_failure_stays_with_its_own_item(monkeypatch):
    original = decode.decode_image
    poison = encode_image(70, 50, seed=99)

    def flaky(data, limits):
        if bytes(data) == poison:
            raise RuntimeError("simulated decoder crash")
        return original(data, limits)

    monkeypatch.setattr(decode, "decode_image", flaky)
    requests = [{"body": encode_image(64, 48, seed=1)}, {"body": poison},
                {"body": encode_image(80, 60, seed=2)}]
    items = flat(make_core(4).decode(requests))
    assert isinstance(items[0], PendingImage) and isinstance(items[2], PendingImage)
    assert isinstance(items[1], InferenceFailed) and "simulated decoder crash" in items[1].details["cause"]
    assert (items[0].image_size, items[2].image_size) == ((48, 64), (60, 80))


def test_a_single_image_or_one_thread_decodes_inline():
    core = make_core(4)
    core.decode([{"body": encode_image(64, 48)}])
    assert core._decode_pool is None  # no pool for a batch of one
    serial = make_core(1)
    serial.decode(batch())
    assert serial._decode_pool is None


def test_decode_threads_setting():
    default = build_settings(None, model_dir="/m", device="cpu")
    assert default.decode_threads == 0
    assert make_core(0)._decode_threads == min(4, core_module.decode_cpu_count())
    assert make_core(3)._decode_threads == 3
    with pytest.raises(SettingsError, match="decode_threads must be >= 0"):
        build_settings({"decode_threads": -1}, model_dir="/m", device="cpu")
