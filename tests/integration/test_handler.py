"""The TorchServe handler class driven with a real ts Context (no server): batches, statuses, metrics."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import re
import threading
from pathlib import Path

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.unit import Units

from tests.conftest import REPO, encode_image
from tests.response_schema import validate

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
    """What TorchServe's worker does per batch: one request processor (headers, status) per request, and
    TorchServe's request ids (what it returns as the x-request-id header)."""
    context.request_processor = [RequestProcessor(h) for h in (headers or [{}] * size)]
    context.request_ids = {i: f"ts-{i}" for i in range(size)}
    context.metrics.set_request_ids(context.request_ids)


def handle(handler, batch: list[dict], context: Context) -> list[dict]:
    """One batch through the handler as TorchServe's worker runs it; each reply must be compact JSON bytes
    (a dict would be re-serialised by the worker with indent=2 and CPython's pure-Python encoder), typed
    as JSON (TorchServe 0.12 sends no Content-Type unless the handler sets one)."""
    replies = handler.handle(batch, context)
    assert all(isinstance(r, bytes) for r in replies), [type(r) for r in replies]
    bodies = [json.loads(r) for r in replies]
    assert [json.dumps(b, separators=(",", ":")).encode() for b in bodies] == replies
    assert {context.get_response_content_type(i) for i in range(len(batch))} == {"application/json"}
    return bodies


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
    bodies = handle(handler, batch, context)

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


def test_options_from_headers_apply_per_request(handler_and_context):
    handler, context = handler_and_context
    image = bytearray(encode_image(320, 240, seed=7))
    start_batch(context, 2, headers=[{"X-Max-Detections": "2"}, {"x-score-threshold": "0.999"}])
    few, strict = handle(handler, [{"body": image}, {"body": image}], context)
    assert len(few["detections"]) == 2
    assert all(d["score"] >= 0.999 for d in strict["detections"])


def test_batch_results_equal_single_requests(handler_and_context):
    handler, context = handler_and_context
    images = [encode_image(320, 240, seed=3), encode_image(180, 260, seed=4)]
    start_batch(context, 2)
    together = handle(handler, [{"body": bytearray(b)} for b in images], context)
    alone = []
    for image in images:
        start_batch(context, 1)
        alone += handle(handler, [{"body": bytearray(image)}], context)
    for batched, single in zip(together, alone, strict=True):
        assert len(batched["detections"]) == len(single["detections"])
        for a, b in zip(batched["detections"], single["detections"], strict=True):
            assert a["label_id"] == b["label_id"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            for key in ("x1", "y1", "x2", "y2"):
                assert a["box"][key] == pytest.approx(b["box"][key], abs=1e-3)


METRIC_LINE = re.compile(r"\[METRICS\](\w+)\.(\w+):([\d.e-]+)\|#(.*?)\|#type:(\w+)")


def emitted_metrics(handler, context, caplog, batch: list[dict]) -> list[tuple[str, str, float, str, str]]:
    """(name, unit, value, dimensions, type) of every [METRICS] line the handler printed for one batch."""
    assert handler.after_reply.drain(), "an earlier batch's metric lines were still being written"
    start_batch(context, len(batch))
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        handler.handle(batch, context)
        assert handler.after_reply.drain(), "the batch's metric lines were not written within 30 s"
    lines = [r.getMessage() for r in caplog.records if r.name == "ts.metrics.caching_metric"]
    caplog.clear()
    assert not [line for line in lines if "Failed to update" in line], lines
    return [(m[1], m[2], float(m[3]), m[4], m[5].lower()) for m in map(METRIC_LINE.match, lines)]


def declared_metrics() -> dict[str, tuple[str, str, list[str]]]:
    """name -> (type, unit as TorchServe prints it, dimension names) from config/metrics.yaml."""
    sections = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    units = Units().units  # TorchServe prints declared units in long form ("ms" -> "Milliseconds")
    return {m["name"]: (kind, units.get(m["unit"], m["unit"]), m["dimensions"])
            for kind, metrics in sections.items() for m in metrics}


def histogram(points, name: str) -> dict[str, float]:
    """One batch's increments of histogram `name`: {le: count, ..., "sum": s, "count": n}."""
    found = {dims.split(",")[0].removeprefix("le:"): value
             for point_name, _, value, dims, _ in points if point_name == f"{name}_bucket"}
    found.update({key: value for point_name, _, value, _, _ in points
                  for key in ("sum", "count") if point_name == f"{name}_{key}"})
    return found


def test_metrics_emitted_are_declared_and_histograms_are_cumulative(handler_and_context, caplog):
    handler, context = handler_and_context
    emitted_metrics(handler, context, caplog, [{"body": bytearray(encode_image(64, 64, seed=4))}])
    # the second batch: a worker's first has no wait before it (CoDetrWorkerWaitSeconds)
    points = emitted_metrics(handler, context, caplog, [{"body": bytearray(encode_image(64, 64, seed=5))},
                                                         {"body": bytearray(encode_image(64, 48, seed=6))},
                                                         {"body": bytearray(b"")}])
    declared = declared_metrics()
    for name, unit, _, dims, kind in points:
        assert declared[name][:2] == (kind, unit), name
        assert [d.split(":")[0] for d in dims.split(",")] == declared[name][2], name
    assert set(declared) - {"HandlerTime", "PredictionTime"} <= {p[0] for p in points}

    sizes = histogram(points, "CoDetrBatchSize")  # two good images: in le=2 and above, not in le=1
    assert sizes == {"1.0": 0, "2.0": 1, "4.0": 1, "8.0": 1, "16.0": 1, "32.0": 1, "64.0": 1, "+Inf": 1,
                     "sum": 2, "count": 1}
    forward = histogram(points, "CoDetrForwardSeconds")
    bounds = [float(le) for le in forward if le not in ("+Inf", "sum", "count")]
    assert bounds == sorted(bounds, reverse=True)  # largest first: cumulative while TorchServe applies them
    assert forward["+Inf"] == forward["count"] == 1 and forward["sum"] > 0
    assert all(forward[repr(b)] == (forward["sum"] <= b) for b in bounds)  # cumulative at the right bound
    values = {name: value for name, _, value, _, _ in points}
    assert values["CoDetrImages"] == 2 and values["CoDetrConfiguredBatchSize"] == 4
    assert values["CoDetrWorkerMemoryBytes"] > 50e6  # a worker with torch loaded holds far more than 50 MB
    rejected = [dims for name, _, _, dims, _ in points if name == "CoDetrRejectedInputs"]
    assert rejected == ["Reason:empty_input,ModelName:co_detr,Level:Model"]


def test_replies_do_not_wait_for_the_metric_lines(handler_and_context):
    """The metric lines are written once the replies are out (in the worker's wait for its next batch), and
    still carry their own batch's request id when the next batch has started by then."""
    handler, context = handler_and_context
    gate, lines = threading.Event(), []

    class SlowWriter(logging.Handler):  # our lines meet a frontend that reads the worker's stdout late
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("[METRICS]CoDetr"):  # not TorchServe's own HandlerTime
                gate.wait(60)
                lines.append(record.getMessage())

    metric_log, writer, replies = logging.getLogger("ts.metrics.caching_metric"), SlowWriter(), []
    metric_log.addHandler(writer)
    level, metric_log.level = metric_log.level, logging.INFO
    try:
        start_batch(context, 2)
        context.request_ids = {0: "batch-one-0", 1: "batch-one-1"}
        answering = threading.Thread(target=lambda: replies.append(
            handle(handler, [{"body": bytearray(encode_image(64, 64))}] * 2, context)))
        answering.start()
        answering.join(20)
        assert replies, "handle() waited for its metric lines to be written"
        start_batch(context, 1)
        context.request_ids = {0: "batch-two-0"}
    finally:
        gate.set()
        assert handler.after_reply.drain()
        metric_log.removeHandler(writer)
        metric_log.setLevel(level)
    assert len(replies[0]) == 2 and all("detections" in body for body in replies[0])
    assert len(lines) > 40 and all(line.endswith(",batch-one-0") for line in lines), lines[:3]


def test_request_ids_reach_bodies_and_log_lines(handler_and_context, caplog):
    handler, context = handler_and_context
    good = bytearray(encode_image(96, 64, seed=8))
    headers = [{"X-Request-ID": "client-42"}, {"x-request-id": "bad id\nwith newline"}, {},
               {"X-Request-ID": "x" * 129}]
    start_batch(context, 4, headers=headers)
    with caplog.at_level(logging.INFO, logger="codetr_serve"):  # INFO: nothing for the two successes
        bodies = handle(handler, [{"body": good}, {"body": bytearray(b"GIF89a....")}, {"body": good},
                                 {"body": bytearray(b"")}], context)
    assert [b["request_id"] for b in bodies] == ["client-42", "ts-1", "ts-2", "ts-3"]
    assert validate(bodies[0]) == [] and bodies[1]["error"]["code"] == "unsupported_image_format"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("codetr_serve")]
    assert lines == [
        (logging.INFO, f"refused request_id=ts-1 status=415 code=unsupported_image_format: "
                       f"{bodies[1]['error']['message']}"),
        (logging.INFO, f"refused request_id=ts-3 status=400 code=empty_input: "
                       f"{bodies[3]['error']['message']}")]


def test_a_failed_batch_is_logged_with_its_request_ids(handler_and_context, caplog, monkeypatch):
    handler, context = handler_and_context

    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(handler.core.detector.model, "predict", broken)
    start_batch(context, 2, headers=[{"X-Request-ID": "job-7/frame-1"}, {}])
    with caplog.at_level(logging.INFO, logger="codetr_serve"):
        bodies = handle(handler, [{"body": bytearray(encode_image(64, 64))}] * 2, context)
    assert [context.get_response_status(i)[0] for i in range(2)] == [500, 500]
    assert [b["request_id"] for b in bodies] == ["job-7/frame-1", "ts-1"]
    records = [r for r in caplog.records if r.name.startswith("codetr_serve")]
    assert "request_ids=job-7/frame-1,ts-1" in records[0].getMessage() and records[0].exc_info
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in records[1:]] == [
        (logging.WARNING, "refused request_id=job-7/frame-1 status=500 code=inference_failed"),
        (logging.WARNING, "refused request_id=ts-1 status=500 code=inference_failed")]


def test_debug_log_level_adds_one_line_per_success(tiny_model_dir, caplog):
    handler = load_handler_class()()
    context = make_context(tiny_model_dir, {"warmup_runs": 0, "log_level": "DEBUG"}, batch_size=2)
    try:
        handler.initialize(context)
        start_batch(context, 2)
        with caplog.at_level(logging.DEBUG, logger="ts"):  # opens the capture; our level is the setting
            handler.handle([{"body": bytearray(encode_image(64, 64))}] * 2, context)
    finally:
        logging.getLogger("codetr_serve").setLevel(logging.INFO)
    served = [r.getMessage() for r in caplog.records if r.name.startswith("codetr_serve") and
              r.levelno == logging.DEBUG and r.getMessage().startswith("served")]
    assert served == ["served request_id=ts-0", "served request_id=ts-1"]


def test_handler_file_only_adapts():
    source = (REPO / "handler" / "co_detr_handler.py").read_text()
    assert len(source.splitlines()) <= 120
    assert source.count("\nclass ") == 1
