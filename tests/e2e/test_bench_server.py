"""The TorchServe that `make bench` measures: its log config keeps what the bench reads from the logs."""

from __future__ import annotations

import time

import pytest
import requests

from bench import paired, runner
from codetr_serve.tools.local_torchserve import LocalTorchServe
from tests.conftest import encode_image
from tests.e2e.conftest import TEST_MODEL_CONFIG, TINY_CONFIG, client_for, run_archive

pytestmark = pytest.mark.e2e


def test_bench_log_config_keeps_per_batch_lines_at_info_without_rolling(tmp_path):
    model_config = tmp_path / "model-config.yaml"
    model_config.write_text(TEST_MODEL_CONFIG)
    built = run_archive("--config", str(TINY_CONFIG), "--out", str(tmp_path / "store"), "--name", "tiny",
                        "--format", "no-archive", "--model-config", str(model_config))
    assert built.returncode == 0, built.stderr
    with LocalTorchServe(tmp_path / "ts", tmp_path / "store", {"tiny": "tiny"},
                         flags=("--log-config", str(runner.LOG_CONFIG))) as server:
        server.wait_ready(300)
        url, start = f"{client_for(server).inference_url}/predictions/tiny", len(runner.metric_log(server))
        for seed in (1, 2):  # one at a time: two batches, the second with a wait before it
            reply = requests.post(url, data=encode_image(96, 64, seed=seed),
                                  headers={"Authorization": f"Bearer {server.key()}"}, timeout=120)
            assert reply.status_code == 200
        deadline = time.monotonic() + 30
        while len(forwards := paired.seconds_ms(runner.metric_lines_since(server, start), "tiny")) < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.2)  # the metric lines follow the replies
        lines = runner.metric_lines_since(server, start)
        assert len(forwards) == 2 and len(paired.seconds_ms(lines, "tiny", paired.WAIT)) == 1
        logs = server.root / "logs"
        assert "[DEBUG]" not in server.log_text("ts_log.log")  # the image's levels, not TorchServe's DEBUG
        assert "co_detr settings:" in server.log_text("model_log.log")  # what the worker printed
        assert not list(logs.glob("*.gz"))

