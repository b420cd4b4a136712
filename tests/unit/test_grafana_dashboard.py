"""config/grafana/codetr-serve.json: a dashboard Grafana can import anywhere, querying only metrics we export.

Here the names are checked against config/metrics.yaml (what TorchServe registers); tests/e2e/test_metrics.py
checks them against a real scrape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from codetr_serve.runtime import metrics
from tests.conftest import REPO

DASHBOARD = REPO / "config" / "grafana" / "codetr-serve.json"
METRICS_YAML = REPO / "config" / "metrics.yaml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}

# PromQL words that look like metric names: keywords, modifiers, and the label lists they take.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "inf", "nan", "atan2"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACED = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression selects (no PromQL parser exists for Python; this strips strings,
    label matchers, ranges and by/on label lists, then keeps identifiers that are not functions)."""
    text = _STRINGS.sub('""', promql)
    text = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", text)
    previous = None
    while previous != text:
        previous, text = text, _LABEL_LISTS.sub(" ", _BRACED.sub(" ", text))
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def declared_names() -> set[str]:
    sections = yaml.safe_load(METRICS_YAML.read_text(encoding="utf-8"))
    return {m["name"] for part in ("ts_metrics", "model_metrics")
            for kind in sections[part].values() for m in kind}


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(A_bucket{M=~"$m", x="y z"}[5m])))') \
        == {"A_bucket"}
    assert metric_names("sum(rate(a_total[$__rate_interval])) / sum without (b) (c) / 1e6 > bool 2") \
        == {"a_total", "c"}
    assert metric_names("label_values(ts_inference_requests_total, model_name)") == \
        {"ts_inference_requests_total"}


def test_every_query_names_only_declared_metrics():
    declared = declared_names()
    assert set(metrics.declared()) <= declared  # metrics.py and metrics.yaml agree
    found = {}
    for where, promql in queries(load_dashboard()):
        names = metric_names(promql)
        assert names, f"{where}: no metric in {promql!r}"
        assert names <= declared, f"{where}: {sorted(names - declared)} not in config/metrics.yaml"
        found[where] = names
    used = set().union(*found.values())
    for histogram in metrics.HISTOGRAMS[:3]:  # forward, preprocess, postprocess quantiles
        assert f"{histogram.name}_bucket" in used
    assert {"ts_queue_latency_microseconds", "CoDetrBatchSize_sum", "CoDetrConfiguredBatchSize",
            "CoDetrImages", "CoDetrWorkerMemoryBytes", "GPUUtilization", "GPUMemoryUsed"} <= used


def test_dashboard_is_portable_and_well_formed():
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    refs = [value for key, value in walk(dashboard) if key == "datasource"]
    assert refs and all(ref == DATASOURCE_REF for ref in refs), "a datasource uid is hard-coded"
    assert "__inputs" not in dashboard and "${DS_" not in DASHBOARD.read_text()

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy") and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


@pytest.mark.parametrize("where_promql", list(queries(load_dashboard())), ids=lambda q: q[0])
def test_queries_are_balanced_and_quantiles_read_buckets(where_promql):
    where, promql = where_promql
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in _STRINGS.sub('""', promql):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            assert depth[closing[char]] >= 0, f"{where}: unbalanced {promql!r}"
    assert not any(depth.values()), f"{where}: unbalanced {promql!r}"
    for inner in re.findall(r"histogram_quantile\(\s*0\.\d+\s*,(.*)\)", promql):
        assert "by (le)" in inner and "_bucket{" in inner, f"{where}: quantile needs le buckets"
    assert "rate(" not in promql or re.search(r"rate\([^()]*\[\$__rate_interval\]\)", promql), where
