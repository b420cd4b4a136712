"""A real TorchServe worker serves with the compiled deformable-attention op, and says so.

If the library fails to load, a worker falls back to mmcv's pure-PyTorch path (2x slower on CPU) and every
detection test still passes. These tests read what the worker reports, the CoDetrDeformableAttentionPath
gauge on /metrics (parsed by prometheus_client) and its startup log line, and fail on an unrequested
fallback; the second test breaks the library on purpose to show that this check catches it.
"""

from __future__ import annotations

import shutil
import time

import pytest
import requests

from codetr_serve.tools.local_torchserve import LocalTorchServe
from tests.conftest import encode_image
from tests.e2e.scrape import scrape

pytestmark = pytest.mark.e2e

JPEG = encode_image(320, 240, seed=5)
GAUGE = "CoDetrDeformableAttentionPath"


def attention_paths(scraped: dict[str, list], model: str) -> dict[tuple[str, str], float]:
    """{(Path, Requested): value} of the gauge for one model."""
    return {(s.labels["Path"], s.labels["Requested"]): s.value for s in scraped.get(GAUGE, [])
            if s.labels.get("ModelName") == model}


def wait_for_paths(server_scrape, model: str, deadline_s: float = 30) -> dict[tuple[str, str], float]:
    """The gauge once a served request made the worker emit it (metric lines arrive after the reply)."""
    end = time.monotonic() + deadline_s
    while True:
        paths = attention_paths(server_scrape(), model)
        if paths or time.monotonic() > end:
            return paths
        time.sleep(0.5)


def path_problems(paths: dict[tuple[str, str], float], model_log: str) -> list[str]:
    """What is wrong with a CPU worker's deformable-attention path; [] when it runs the compiled op."""
    problems = []
    if paths != {("op", "auto"): 1.0}:
        problems.append(f"{GAUGE} should be only {{Path=op, Requested=auto}} = 1, got {paths}")
    if "deformable attention path: op (cpu_msda: auto)" not in model_log:
        problems.append("the worker's startup log does not say 'deformable attention path: op'")
    return problems


def served(url: str, token: str) -> None:
    reply = requests.post(url, data=JPEG, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert reply.status_code == 200, reply.text


def test_the_worker_serves_with_the_compiled_op(server):
    served(server.predict_url(), server.keys["inference"])
    paths = wait_for_paths(lambda: scrape(server), "co_detr")
    assert path_problems(paths, server.local.log_text("model_log.log")) == []


def test_a_worker_whose_library_cannot_load_is_caught(server, tmp_path, monkeypatch):
    """Same archive, but CODETR_OPS_DIR points at a folder holding a broken library: the worker still
    answers (mmcv's path), and the check above reports it."""
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "codetr_ops.so").write_bytes(b"\x7fELF not a library")
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(server.store / "co_detr.mar", store / "co_detr.mar")
    monkeypatch.setenv("CODETR_OPS_DIR", str(tmp_path / "ops"))  # workers inherit the server's environment
    with LocalTorchServe(tmp_path / "ts", store, {"co_detr": "co_detr.mar"}) as broken:
        broken.wait_ready(300)
        served(broken.url("inference", "predictions/co_detr"), broken.key())
        paths = wait_for_paths(lambda: scrape_local(broken), "co_detr")
        log = broken.log_text("model_log.log")
    assert paths == {("fallback", "auto"): 1.0}
    assert "deformable attention path: fallback (cpu_msda: auto)" in log and "failed to load" in log
    problems = path_problems(paths, log)
    assert len(problems) == 2 and "Path=op" in problems[0]


def scrape_local(local: LocalTorchServe) -> dict[str, list]:
    class _Server:
        metrics_url = local.url("metrics", "metrics")

    return scrape(_Server)
