"""The TorchServe handler class driven with a real ts Context (no server): batches, statuses, metrics."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.unit import Units

from tests.conftest import REPO, encode_image

METRICS_YAML = REPO / "config" / "metrics.yaml"


def load_handler_class():
    spec = importlib.util.spec_from_file_location("co_detr_handler", REPO / "handler" / "co_detr_handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CoDetrHandler


def make_context(model_dir: Path, handler_section: dict, batch_size: int) -> Context:
    metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = "co_detr"  # the worker sets this when it loads the model
    manifest = {"model": {"modelName": "co_detr", "modelVersion": "test"}}
    context = Context("co_detr", str(model_dir), manifest, batch_size, None, "0.12.0",
                      metrics=metrics, model_yaml_config={"handler": handler_section})
    return context


def start_batch(context: Context, size: int, headers: list[dict] | None = None) -> None:
    """What TorchServe's worker does per batch: one request processor (headers, status) per request."""
    context.request_processor = [RequestProcessor(h) for h in (headers or [{}] * size)]
    context.metrics.set_request_ids({i: f"req-{i}" for i in range(size)})


@pytest.fixture(scope="module")
def handler_and_context(tiny_model_dir):
    handler = load_handler_class()()
    context = make_context(tiny_model_dir, {"score_threshold": 0.0, "warmup_runs": 1}, batch_size=4)
    handler.initialize(context)
    return handler, context


def test_mixed_batch_returns_per_item_statuses(handler_and_context):
    handler, context = handler_and_context
    good = encode_image(320, 240, seed=1)
    batch = [
        {"body": bytearray(good)},
        {"body": bytearray(b"this is not an image")},
        {"body": {"image": base64.b64encode(encode_image(200, 300, "PNG", seed=2)).decode()}},
        {"data": bytearray(good), "score_threshold": bytearray(b"7")},
    ]
    start_batch(context, len(batch))
    bodies = handler.handle(batch, context)

    statuses = [context.get_response_status(i)[0] for i in range(len(batch))]
    assert statuses == [200, 415, 200, 400]
    assert bodies[1]["error"]["code"] == "unsupported_image_format"
    assert bodies[3]["error"]["code"] == "invalid_option"
    assert "score_threshold" in bodies[3]["error"]["message"]
    for body, (width, height) in ((bodies[0], (320, 240)), (bodies[2], (200, 300))):
        assert body["schema"] == "codetr-serve/detections/v1"
        assert body["image"] == {"width": width, "height": height}
        assert body["model"] == {"name": "co_detr", "version": "test"}
        assert 0 < len(body["detections"]) <= 100
        json.dumps(body)  # the worker serialises it


def test_options_from_headers_apply_per_request(handler_and_context):
    handler, context = handler_and_context
    image = bytearray(encode_image(320, 240, seed=7))
    start_batch(context, 2, headers=[{"X-Max-Detections": "2"}, {"x-score-threshold": "0.999"}])
    few, strict = handler.handle([{"body": image}, {"body": image}], context)
    assert len(few["detections"]) == 2
    assert all(d["score"] >= 0.999 for d in strict["detections"])


def test_batch_results_equal_single_requests(handler_and_context):
    handler, context = handler_and_context
    images = [encode_image(320, 240, seed=3), encode_image(180, 260, seed=4)]
    start_batch(context, 2)
    together = handler.handle([{"body": bytearray(b)} for b in images], context)
    alone = []
    for image in images:
        start_batch(context, 1)
        alone += handler.handle([{"body": bytearray(image)}], context)
    for batched, single in zip(together, alone, strict=True):
        assert len(batched["detections"]) == len(single["detections"])
        for a, b in zip(batched["detections"], single["detections"], strict=True):
            assert a["label_id"] == b["label_id"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            for key in ("x1", "y1", "x2", "y2"):
                assert a["box"][key] == pytest.approx(b["box"][key], abs=1e-3)


def test_metrics_emitted_with_declared_names(handler_and_context, caplog):
    handler, context = handler_and_context
    start_batch(context, 3)
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        handler.handle([{"body": bytearray(encode_image(64, 64, seed=5))},
                        {"body": bytearray(encode_image(64, 48, seed=6))},
                        {"body": bytearray(b"")}], context)
    lines = [r.getMessage() for r in caplog.records if r.name == "ts.metrics.caching_metric"]
    assert not [line for line in lines if "Failed to update" in line], lines
    emitted = {}
    for line in lines:
        match = re.match(r"\[METRICS\](\w+)\.(\w+):([\d.]+)\|#(.*?)\|#type:(\w+)", line)
        emitted[match[1]] = (match[2], float(match[3]), match[4], match[5].lower())
    declared = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    units = Units().units  # TorchServe prints declared units in long form ("ms" -> "Milliseconds")
    declared = {m["name"]: (kind, units.get(m["unit"], m["unit"]))
                for kind, metrics in declared.items() for m in metrics}
    for name, (unit, _, _, kind) in emitted.items():
        assert declared[name] == (kind, unit), name
    assert emitted["CoDetrBatchSize"][1] == 2
    assert emitted["CoDetrImages"][1] == 2
    assert emitted["CoDetrRejectedInputs"][2] == "Reason:empty_input,ModelName:co_detr,Level:Model"
    assert {"CoDetrPreprocessMs", "CoDetrInferenceMs", "CoDetrPostprocessMs", "CoDetrBatches",
            "CoDetrDetectionsPerImage"} <= set(emitted)


def test_handler_file_only_adapts():
    source = (REPO / "handler" / "co_detr_handler.py").read_text()
    assert len(source.splitlines()) <= 120
    assert source.count("\nclass ") == 1
