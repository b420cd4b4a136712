"""bench.metrics_parse: Prometheus text and the `[METRICS]` log lines of TorchServe 0.12."""

from __future__ import annotations

import math

import pytest

from bench import metrics_parse, runner

PROMETHEUS = """\
# HELP CoDetrImages Torchserve prometheus counter metric with unit: count
# TYPE CoDetrImages counter
CoDetrImages{ModelName="a",Level="Model",Hostname="vm",} 12.0
CoDetrImages{ModelName="b",Level="Model",Hostname="vm",} 5.0
CoDetrBatches{ModelName="a",Level="Model",Hostname="vm",} 4.0
ts_inference_requests_total{model_name="a",model_version="default",hostname="vm",} 13.0
"""

LOG = [
    "2026-11-22T04:29:01,426 [INFO ] W-9000-m-stdout org.pytorch.serve.wlm.WorkerLifeCycle - result=[METRICS]"
    "CoDetrBatchSize.Count:1.0|#ModelName:m,Level:Model|#type:GAUGE|#hostname:vm,1795321741,id-1"
    ", pattern=[METRICS]",
    # TorchServe echoes every point twice in ts_log.log in Prometheus mode
    "2026-11-22T04:29:01,426 [INFO ] W-9000-m-stdout org.pytorch.serve.wlm.WorkerLifeCycle - result=[METRICS]"
    "CoDetrBatchSize.Count:1.0|#ModelName:m,Level:Model|#type:GAUGE|#hostname:vm,1795321741,id-1"
    ", pattern=[METRICS]",
    "2026-11-22T04:29:02,990 [INFO ] ... result=[METRICS]CoDetrBatchSize.Count:4.0|#ModelName:m,Level:Model"
    "|#type:GAUGE|#hostname:vm,1795321742,id-2,id-3,id-4,id-5, pattern=[METRICS]",
    "2026-11-22T04:29:02,990 [INFO ] ... [METRICS]CoDetrInferenceMs.ms:80.5|#ModelName:m,Level:Model"
    "|#hostname:vm,1,id-2",
    "2026-11-22T04:29:03,000 [INFO ] model_metrics: [METRICS]CoDetrBatchSize.Count:4.0|#ModelName:m"
    "|#hostname:vm,2,id-6",
]


def test_prometheus_sums_matching_samples() -> None:
    assert metrics_parse.prometheus_values(PROMETHEUS, "CoDetrImages") == 17.0
    assert metrics_parse.prometheus_values(PROMETHEUS, "CoDetrImages", {"ModelName": "a"}) == 12.0
    assert metrics_parse.prometheus_values(PROMETHEUS, "CoDetrBatches") == 4.0
    assert metrics_parse.prometheus_values(PROMETHEUS, "Missing") == 0.0


def test_log_values_dedupe_echoed_points() -> None:
    assert metrics_parse.log_metric_values(LOG, "CoDetrBatchSize") == [1.0, 4.0, 4.0]
    assert metrics_parse.log_metric_values(LOG, "CoDetrInferenceMs") == [80.5]


def test_histogram_and_mean_batch() -> None:
    histogram = metrics_parse.batch_histogram([1.0, 4.0, 4.0, 2.0])
    assert histogram == {1: 1, 2: 1, 4: 2}
    assert list(histogram) == [1, 2, 4]
    assert metrics_parse.format_histogram(histogram) == "1x1 2x1 4x2"
    assert metrics_parse.format_histogram({}) == "-"
    assert metrics_parse.mean_batch(12.0, 4.0) == 3.0
    assert math.isnan(metrics_parse.mean_batch(0.0, 0.0))


def test_log_metric_values_of_one_model_only() -> None:
    lines = [f"... [METRICS]CoDetrInferenceMs.ms:{ms}|#ModelName:{model},Level:Model|#hostname:vm,{i}"
             for i, (ms, model) in enumerate([(80.5, "tuned"), (99.0, "tuned_v2"), (70.0, "bs1")])]
    assert metrics_parse.log_metric_values(lines, "CoDetrInferenceMs", "tuned") == [80.5]
    assert metrics_parse.log_metric_values(lines, "CoDetrInferenceMs") == [80.5, 99.0, 70.0]


def test_a_log_that_shrank_during_a_phase_is_an_error_not_a_short_phase():
    class Server:
        text = "x" * 100

        def log_text(self, name: str) -> str:
            return self.text if name == "ts_log.log" else ""

    server = Server()
    start = len(runner.metric_log(server))
    server.text += "\n[METRICS]a.Count:1|#\n"
    assert runner.metric_lines_since(server, start) == ["", "[METRICS]a.Count:1|#"]
    server.text = "rolled\n"
    with pytest.raises(RuntimeError, match="rolled over"):
        runner.metric_lines_since(server, start)
