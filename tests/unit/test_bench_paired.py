"""bench.paired, bench.loadgen's alternate mode and bench.inprocess's command loop: the headline machinery."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import loadgen, paired, report
from bench.inprocess import CeilingProcess
from bench.plan import tiny_plan
from tests.conftest import encode_image


def side(images: int, seconds: float, errors: int = 0, latencies=(), mean_batch: float = 4.0) -> dict:
    # The model is busy 90 % of each phase's wall time in these fakes.
    return {"images": images, "seconds": seconds, "errors": errors, "mean_batch": mean_batch,
            "latencies_ms": list(latencies), "forward_s": 0.9 * seconds}


def one_round(index: int, ceiling_s: float, tuned_s: float, baseline_s: float, tuned_ms, bs1_ms) -> dict:
    return {"round": index, "order": ["ceiling", "tuned", "baseline"],
            "ceiling_device": {"device": "cpu", "threads": 1},
            "loaded": {"ceiling": side(32, ceiling_s),
                       "tuned": {**side(32, tuned_s, latencies=[100.0] * 32), "waits_ms": [index, 3.0, 5.0]},
                       "baseline": side(32, baseline_s, latencies=[200.0] * 32, mean_batch=math.nan)},
            "light": {"tuned": list(tuned_ms), "bs1": list(bs1_ms), "tuned_forward_ms": 90.0,
                      "bs1_forward_ms": 95.0, "errors": 0}}


# Round 2 runs on a machine 50 % slower for every side: per-round ratios stay put, and so must the pooled one.
ROUNDS = [one_round(1, 4.0, 4.2, 8.0, [101, 103, 105], [100, 100, 100]),
          one_round(2, 6.0, 6.3, 12.0, [153, 150, 156], [150, 150, 150])]


def test_round_ratios_are_taken_within_the_round() -> None:
    ratios = paired.round_ratios(ROUNDS[0])
    assert ratios["efficiency"] == pytest.approx(4.0 / 4.2)
    assert ratios["versus_baseline"] == pytest.approx(8.0 / 4.2)
    assert ratios["penalty"] == pytest.approx(1.03)


def test_headline_pools_rounds_and_reports_their_range() -> None:
    efficiency, versus, penalty = paired.headline(ROUNDS)
    assert efficiency.value == pytest.approx(10.0 / 10.5) and efficiency.met is True
    assert efficiency.spread == pytest.approx((4.0 / 4.2, 4.0 / 4.2))
    assert versus.value == pytest.approx(20.0 / 10.5) and versus.met is None
    assert penalty.value == pytest.approx(127.5 / 125.0)  # medians of both sides over all rounds
    assert penalty.spread == pytest.approx((1.02, 1.03))


def test_headline_misses_are_reported_as_misses() -> None:
    slow = [one_round(1, 4.0, 5.0, 8.0, [130, 131], [100, 101])]
    efficiency, _, penalty = paired.headline(slow)
    assert efficiency.met is False and penalty.met is False


def test_rows_and_ceiling_summary_pool_every_round() -> None:
    plan = tiny_plan()
    rows = {(r.config, r.concurrency): r for r in paired.rows(plan, ROUNDS)}
    tuned8 = rows[(plan.tuned, 8)]
    assert tuned8.throughput == pytest.approx(64 / 10.5) and tuned8.p50_ms == 100.0
    assert tuned8.requests == 64 and tuned8.source == "paired x2" and tuned8.batch_size == 4
    assert rows[(plan.baseline, 8)].handler == "baseline"
    assert rows[(plan.bs1, 1)].p50_ms == 125.0 and math.isnan(rows[(plan.bs1, 1)].throughput)
    summary = paired.ceiling_summary(ROUNDS)
    assert summary["images_per_s"] == pytest.approx(6.4) and summary["batches"] == 16
    assert summary["ms_per_batch"] == pytest.approx(625.0)


def test_errors_count_every_failed_request() -> None:
    broken = json.loads(json.dumps(ROUNDS))
    broken[0]["loaded"]["baseline"]["errors"] = 2
    broken[1]["light"]["errors"] = 1
    assert paired.errors(ROUNDS) == 0 and paired.errors(broken) == 3


def test_abba_order_balances_both_targets() -> None:
    order = loadgen.abba_order(8)
    assert order == [0, 1, 1, 0, 0, 1, 1, 0]
    assert loadgen.abba_order(6, targets=3) == [0, 1, 2, 0, 1, 2]


@pytest.fixture()
def echo_server():
    """A real HTTP server that answers 200 on /a and 503 on /b, and remembers the paths it saw."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            self.send_response(200 if self.path == "/a" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_alternate_mode_sends_one_at_a_time_in_abba_order(echo_server, tmp_path: Path) -> None:
    url, seen = echo_server
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpeg")
    out = tmp_path / "r.json"
    assert loadgen.main(["--url", f"{url}/a", "--url", f"{url}/b", "--image", str(image), "--mode",
                         "alternate", "--max-requests", "6", "--max-seconds", "30", "--out", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert seen == ["/a", "/b", "/b", "/a", "/a", "/b"]
    assert [(r["target"], r["status"]) for r in records] == [(0, 200), (1, 503), (1, 503), (0, 200),
                                                             (0, 200), (1, 503)]


def test_loadgen_refuses_a_remote_second_url(tmp_path: Path) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpeg")
    with pytest.raises(SystemExit, match="only loopback"):
        loadgen.main(["--url", "http://127.0.0.1:1/a", "--url", "http://example.com/b", "--image", str(image),
                      "--mode", "alternate", "--out", str(tmp_path / "r.json")])


def test_ceiling_process_keeps_the_model_loaded_between_commands(tiny_model_dir, tmp_path: Path) -> None:
    image = tmp_path / "frame.jpg"
    image.write_bytes(encode_image(160, 120))
    handler = {"warmup_runs": 0, "test_scale": [160, 96]}
    with CeilingProcess(tiny_model_dir, handler, batch=2, threads=1, image=image) as ceiling:
        first, second = ceiling.measure(1), ceiling.measure(3)
    assert (first["batch"], first["batches"], second["batches"]) == (2, 1, 3)
    assert second["images_per_s"] > 0 and second["threads"] == 1 and second["device"] == "cpu"
    assert ceiling.process.returncode == 0


def test_rounds_table_shows_each_sides_figures_and_forward_time() -> None:
    text = report.rounds_table(ROUNDS, [paired.round_ratios(r) for r in ROUNDS])
    first = text.splitlines()[2]
    assert first.startswith("| 1 | ceiling > tuned > baseline | 8.000 | 7.619 | 4.000 | 103 (90) | 100 (95) ")
    assert first.endswith("| 0.952 | 1.905 | 1.030 |")


def test_decomposition_separates_model_speed_from_the_serving_path() -> None:
    # Both sides keep the model 90 % busy, so the whole efficiency gap is the model's speed in each process.
    split = paired.decomposition(ROUNDS)
    assert split["efficiency_duty"] == pytest.approx(1.0)
    assert split["efficiency_speed"] == pytest.approx(10.0 / 10.5)
    assert split["penalty_forward"] == pytest.approx(90.0 / 95.0)
    # Per round, median - forward: tuned 103-90 and 153-90 (mean 38), bs1 100-95 and 150-95 (mean 30);
    # the 8 ms difference over the pooled bs1 p50 (125 ms) is what the delay costs.
    assert split["rest_tuned_ms"] == pytest.approx(38.0) and split["rest_bs1_ms"] == pytest.approx(30.0)
    assert split["penalty_forward_equal"] == pytest.approx(1.064)
    table = report.decomposition_table(split)
    lines = table.splitlines()
    assert split["wait_served_ms"] == pytest.approx(3.0)  # median of 1, 3, 5, 2, 3, 5 over both rounds
    assert lines[2] == ("| serving efficiency | 0.952 | busy share of wall time: 0.900 served vs 0.900 "
                        "in-process; the served worker waits 3.0 ms for each next batch (median) | 1.000 |")
    assert lines[3] == ("| low-traffic penalty | 0.947 | rest of a c=1 request: 38 ms tuned vs 30 ms bs1 "
                        "| 1.064 |")
