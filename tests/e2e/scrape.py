"""Reading /metrics in e2e tests: parsed by prometheus_client (a parser we did not write), and waited on.

A worker's metric lines reach TorchServe after its replies, one by one, so a scrape right after a reply may
miss the last batch; `count_forwards` waits for the counters to settle before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(server) -> dict[str, list]:
    """Sample name -> samples, as prometheus_client parses TorchServe's /metrics (counters gain `_total`)."""
    text = requests.get(server.metrics_url, timeout=30).text
    by_name: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        by_name.setdefault(family.name, [])
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    return by_name


def series(scraped: dict[str, list], name: str, model: str = "co_detr") -> dict[str, float]:
    """{le or "": value} of counter `name` for one model (parsed counters are named `<name>_total`)."""
    samples = scraped.get(f"{name}_total", [])
    return {s.labels.get("le", ""): s.value for s in samples if s.labels.get("ModelName") == model}


def images_and_batches(scraped: dict[str, list]) -> tuple[float, float]:
    return series(scraped, "CoDetrImages").get("", 0.0), series(scraped, "CoDetrBatches").get("", 0.0)


def settled_scrape(server, images: float | None = None, deadline_s: float = 30) -> dict[str, list]:
    """A scrape once CoDetrImages reached `images` (or, without it, once two reads 0.5 s apart agree)."""
    end = time.monotonic() + deadline_s
    scraped = scrape(server)
    while True:
        assert time.monotonic() < end, "the batches' metrics never settled on /metrics"
        if images is not None and images_and_batches(scraped)[0] >= images:
            return scraped
        time.sleep(0.5)
        scraped, previous = scrape(server), scraped
        if images is None and images_and_batches(scraped) == images_and_batches(previous):
            return scraped


def count_forwards(server, send: Callable[[], None], images: int) -> tuple[float, float]:
    """(images, forwards) the server counted while `send()` ran `images` images through it."""
    before_images, before_batches = images_and_batches(settled_scrape(server))
    send()
    after_images, after_batches = images_and_batches(settled_scrape(server, before_images + images))
    return after_images - before_images, after_batches - before_batches
