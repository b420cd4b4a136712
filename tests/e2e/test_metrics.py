"""Metrics, request ids and logs through a real TorchServe; scrapes are read by prometheus_client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from codetr_serve.runtime import metrics
from tests.conftest import encode_image
from tests.e2e.scrape import scrape, series, settled_scrape
from tests.unit.test_grafana_dashboard import load_dashboard, metric_names, queries

pytestmark = pytest.mark.e2e

JPEG = encode_image(320, 240, seed=21)
# Dashboard metrics a CPU test server cannot have samples for: GPU ones, and 5xx before any server fault.
NO_SAMPLES_HERE = {"GPUUtilization", "GPUMemoryUsed", "GPUMemoryUtilization", "Requests5XX"}


def histogram(scraped: dict[str, list], name: str) -> tuple[dict[float, float], float, float]:
    """(cumulative counts by upper bound, sum, count) of one of our counter-built histograms."""
    buckets = {float(le): value for le, value in series(scraped, f"{name}_bucket").items()}
    return buckets, series(scraped, f"{name}_sum")[""], series(scraped, f"{name}_count")[""]


def post(server, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(server.predict_url(), data=body, headers={**server.auth(), **(headers or {})},
                         timeout=120)


def test_latency_and_batch_size_histograms_through_torchserve(server):
    before = scrape(server)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: post(server, JPEG), range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    after = settled_scrape(server, series(before, "CoDetrImages").get("", 0.0) + 6)

    for spec in metrics.HISTOGRAMS:
        buckets, total, count = histogram(after, spec.name)
        assert sorted(buckets) == [*spec.bounds, float("inf")], spec.name
        counts = [buckets[bound] for bound in sorted(buckets)]
        assert counts == sorted(counts), f"{spec.name}: buckets are not cumulative: {counts}"
        assert buckets[float("inf")] == count and total > 0, spec.name
    _, forward_sum, forward_count = histogram(after, "CoDetrForwardSeconds")
    assert forward_count - series(before, "CoDetrForwardSeconds_count").get("", 0.0) >= 1
    assert forward_sum > series(before, "CoDetrForwardSeconds_sum").get("", 0.0)
    _, images, batches = histogram(after, "CoDetrBatchSize")
    assert images == series(after, "CoDetrImages")[""] and batches == series(after, "CoDetrBatches")[""]
    queue = [s for s in after["ts_queue_latency_microseconds_total"] if s.labels["model_name"] == "co_detr"]
    assert queue and queue[0].value > 0


def test_worker_wait_is_the_idle_time_between_batches(server):
    images = series(scrape(server), "CoDetrImages").get("", 0.0)
    for _ in range(2):  # a worker's first batch has no wait: make sure the second one is behind us
        assert post(server, JPEG).status_code == 200
    before = settled_scrape(server, images + 2)
    time.sleep(0.5)  # the worker idles: the next batch's wait includes this pause
    assert post(server, JPEG).status_code == 200
    after = settled_scrape(server, images + 3)
    (old, old_sum, old_count), (new, new_sum, new_count) = (histogram(before, "CoDetrWorkerWaitSeconds"),
                                                            histogram(after, "CoDetrWorkerWaitSeconds"))
    waited = new_sum - old_sum
    assert new_count - old_count == 1 and 0.5 <= waited < 10.0
    increments = {bound: new[bound] - old[bound] for bound in new}
    assert increments == {bound: float(waited <= bound) for bound in new}


def test_request_ids_in_bodies_headers_and_rejection_logs(server):
    bad = post(server, b"GIF89a....", {"X-Request-ID": "e2e-bad-1"})
    assert bad.status_code == 415
    assert bad.json()["request_id"] == "e2e-bad-1"
    assert bad.headers["x-request-id"] != "e2e-bad-1"  # TorchServe 0.12 overwrites the header with its own id
    plain = post(server, JPEG)
    assert plain.status_code == 200 and plain.json()["request_id"] == plain.headers["x-request-id"]
    invalid = post(server, JPEG, {"X-Request-ID": "two words"})
    assert invalid.json()["request_id"] == invalid.headers["x-request-id"]

    expected = "refused request_id=e2e-bad-1 status=415 code=unsupported_image_format"
    model_log = server.root / "logs" / "model_log.log"  # TorchServe repeats it in ts_log.log and stdout
    deadline = time.monotonic() + 15
    while expected not in model_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)  # TorchServe copies worker output into model_log.log asynchronously
    logs = model_log.read_text()
    assert logs.count(expected) == 1
    assert f"request_id={plain.json()['request_id']}" not in logs  # nothing per successful image at INFO
    assert "served request_id=" not in logs


def test_dashboard_queries_only_metrics_the_server_exports(server):
    images = series(scrape(server), "CoDetrImages").get("", 0.0)
    post(server, JPEG)
    post(server, b"not an image at all")
    scraped = settled_scrape(server, images + 1)
    with_samples = {name for name, samples in scraped.items() if samples}
    # prometheus_client names a counter's samples `<name>_total`, whatever TorchServe called it.
    with_samples |= {name.removesuffix("_total") for name in with_samples}
    exported = set(scraped) | with_samples
    for where, promql in queries(load_dashboard()):
        names = metric_names(promql)
        assert names <= exported, f"{where}: {sorted(names - exported)} not in the scrape"
        missing = names - with_samples - NO_SAMPLES_HERE
        assert not missing, f"{where}: {sorted(missing)} has no samples after traffic"
