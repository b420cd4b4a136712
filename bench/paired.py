"""The headline ratios, measured in alternating rounds so the machine's drift lands on both sides.

Measuring one config and then the next, minutes apart, compares two states of the machine as much as two
configs: on the development VM the same forward ran up to 15 % slower from one server to the next. Here
every side of every ratio is measured in every round, in short phases, with the order rotated per round:

- loaded: the in-process ceiling (`CeilingProcess`, model already loaded), the tuned config and the
  mmdet-style baseline at concurrency 8, each for a bounded number of images;
- light: the tuned config and the batch-size-1 config at concurrency 1, one request at a time, A B B A.

All configs are models of one TorchServe (`runner.serve_all`), so no server restarts between sides, and
every process that runs the model is pinned to the same core (`bench/pinning.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import metrics_parse, stats
from bench.inprocess import CeilingProcess
from bench.pinning import CoreSplit, frontend_pids, pinned, split_cores
from bench.plan import ModelPlan
from bench.report import SIDES
from bench.runner import Row, loadgen, mean_batch_between, metric_lines_since, metric_log
from codetr_serve.tools.local_torchserve import LocalTorchServe


@dataclass(frozen=True)
class Side:
    """One side of one round under load: images done, seconds taken, failed requests, server's mean batch."""

    images: int
    seconds: float
    errors: int = 0
    mean_batch: float = float("nan")
    latencies_ms: tuple[float, ...] = ()
    forward_s: float = float("nan")  # time in the model's forward (CoDetrForwardSeconds); NaN: baseline
    # The worker's wait before each batch but the phase's first (CoDetrWorkerWaitSeconds): the front end's
    # turnaround with requests queued. The first one spans the time since this model's previous phase.
    waits_ms: tuple[float, ...] = ()


def loaded_phase(server: LocalTorchServe, plan: ModelPlan, name: str, image: Path, out: Path) -> Side:
    """Closed loop at the paired concurrency against model `name`."""
    paired = plan.paired
    before = (server.metrics_text(), len(metric_log(server)))
    result = loadgen(server, [name], ["--mode", "closed", "--concurrency", str(paired.concurrency)],
                     paired.loaded_requests, paired.loaded_seconds, image, out)
    latencies = tuple(r["latency_ms"] for r in result["records"] if r["status"] == 200)
    mean_batch = mean_batch_between(before[0], server.metrics_text())
    lines = metric_lines_since(server, before[1])
    forward_s = sum(seconds_ms(lines, name, FORWARD)) / 1000.0 or float("nan")
    waits = seconds_ms(lines, name, WAIT)[1:]
    return Side(len(latencies), result["duration_s"], len(result["records"]) - len(latencies), mean_batch,
                latencies, forward_s, tuple(waits))


FORWARD, WAIT = "CoDetrForwardSeconds_sum", "CoDetrWorkerWaitSeconds_sum"


def seconds_ms(lines: list[str], name: str, metric: str = FORWARD) -> list[float]:
    """Every observation of a seconds histogram's `metric` (its _sum; the forward's by default) by model
    `name`'s workers in metric-log `lines`, in ms, as the workers timed them."""
    return [1000.0 * s for s in metrics_parse.log_metric_values(lines, metric, name)]


def light_phase(server: LocalTorchServe, plan: ModelPlan, image: Path, out: Path) -> dict:
    """Tuned and batch-1 configs alternating at concurrency 1: latencies (ms) of the successes per side,
    and each side's mean forward as its worker reports it (what is left is queueing, delay and transport).
    """
    paired = plan.paired
    log_start = len(metric_log(server))
    result = loadgen(server, [plan.tuned, plan.bs1], ["--mode", "alternate"], paired.light_requests,
                     paired.light_seconds, image, out)
    by_side: dict[str, list[float]] = {"tuned": [], "bs1": []}
    errors = 0
    for record in result["records"]:
        if record["status"] != 200:
            errors += 1
            continue
        by_side["tuned" if record["target"] == 0 else "bs1"].append(record["latency_ms"])
    lines = metric_lines_since(server, log_start)
    forward = {f"{side}_forward_ms": _mean(seconds_ms(lines, name))
               for side, name in (("tuned", plan.tuned), ("bs1", plan.bs1))}
    return {**by_side, **forward, "errors": errors}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def one_round(index: int, server: LocalTorchServe, ceiling: CeilingProcess, plan: ModelPlan, image: Path,
              work: Path) -> dict:
    """Every side once, the loaded ones in an order rotated by `index`, then the light phase."""
    order = [SIDES[(index + k) % len(SIDES)] for k in range(len(SIDES))]
    loaded: dict[str, Side] = {}
    device = {}
    for side in order:
        if side == "ceiling":
            summary = ceiling.measure(plan.paired.ceiling_batches)
            device = {"device": summary["device"], "threads": summary["threads"]}
            loaded[side] = Side(summary["batch"] * summary["batches"], summary["seconds"],
                                mean_batch=float(summary["batch"]), forward_s=summary["forward_seconds"])
        else:
            name = plan.tuned if side == "tuned" else plan.baseline
            loaded[side] = loaded_phase(server, plan, name, image, work / f"paired-{index}-{side}.json")
    light = light_phase(server, plan, image, work / f"paired-{index}-light.json")
    return {"round": index + 1, "order": order, "ceiling_device": device,
            "loaded": {side: value.__dict__ for side, value in loaded.items()}, "light": light}


def run_rounds(server: LocalTorchServe, plan: ModelPlan, model_dir: Path, image: Path,
               work: Path) -> list[dict]:
    """`plan.paired.rounds` rounds against `server` and an in-process copy of the same model."""
    tuned = next(c for c in plan.configs if c.name == plan.tuned)
    rounds = []
    with CeilingProcess(model_dir, plan.handler, tuned.batch_size, tuned.threads, image,
                        log=work / "inprocess.log") as ceiling:
        names = (plan.tuned, plan.bs1, plan.baseline)
        model_pids = [pid for name in names for pid in server.worker_pids(name)] + [ceiling.process.pid]
        with pinned(core_split(plan), model_pids, frontend_pids(server.process.pid)) as cores:
            for index in range(plan.paired.rounds):
                rounds.append({**one_round(index, server, ceiling, plan, image, work), "cores": cores})
                print(f"  {plan.name} paired round {index + 1}: {round_line(rounds[-1])}", flush=True)
    return rounds


def core_split(plan: ModelPlan) -> CoreSplit | None:
    """One shared model core when every paired side is one single-threaded process, else no pinning."""
    sides = [c for c in plan.configs if c.name in (plan.tuned, plan.bs1, plan.baseline)]
    if any(c.threads != 1 or c.workers != 1 for c in sides):
        return None
    return split_cores()


def throughput(sides: list[dict]) -> float:
    """Images per second pooled over sides (total images / total seconds)."""
    return stats.ratio(sum(s["images"] for s in sides), sum(s["seconds"] for s in sides))


def round_ratios(one: dict) -> dict[str, float]:
    """The three ratios of a single round."""
    loaded, light = one["loaded"], one["light"]
    tput = {side: throughput([loaded[side]]) for side in SIDES}
    return {"efficiency": stats.ratio(tput["tuned"], tput["ceiling"]),
            "versus_baseline": stats.ratio(tput["tuned"], tput["baseline"]),
            "penalty": stats.ratio(stats.percentile(light["tuned"], 50), stats.percentile(light["bs1"], 50))}


def round_line(one: dict) -> str:
    """A progress line for one round."""
    return "  ".join(f"{key} {value:.3f}" for key, value in round_ratios(one).items())


def headline(rounds: list[dict]) -> list[stats.Verdict]:
    """The three ratios pooled over all rounds, each with the range of its per-round values."""
    pooled = {side: throughput([r["loaded"][side] for r in rounds]) for side in SIDES}
    tuned_ms = [ms for r in rounds for ms in r["light"]["tuned"]]
    bs1_ms = [ms for r in rounds for ms in r["light"]["bs1"]]
    per_round = [round_ratios(r) for r in rounds]

    def of_rounds(key: str) -> list[float]:
        return [values[key] for values in per_round]

    return [
        stats.check("serving efficiency (TorchServe c=8 / in-process, same batch)",
                    stats.ratio(pooled["tuned"], pooled["ceiling"]), ">= 0.95", of_rounds("efficiency")),
        stats.check("ours (tuned) vs mmdet-style baseline, throughput at c=8",
                    stats.ratio(pooled["tuned"], pooled["baseline"]), None, of_rounds("versus_baseline")),
        stats.check("low-traffic penalty (c=1 p50, tuned / batch_size 1)",
                    stats.ratio(stats.percentile(tuned_ms, 50), stats.percentile(bs1_ms, 50)), "<= 1.05",
                    of_rounds("penalty")),
    ]


def ceiling_summary(rounds: list[dict]) -> dict:
    """The in-process figures pooled over the rounds, in the shape of a one-shot ceiling."""
    sides = [r["loaded"]["ceiling"] for r in rounds]
    batch = int(sides[0]["mean_batch"]) if sides else 0
    images, seconds = sum(s["images"] for s in sides), sum(s["seconds"] for s in sides)
    batches = images // batch if batch else 0
    return {"batch": batch, "batches": batches, "seconds": seconds,
            "images_per_s": stats.ratio(images, seconds),
            "ms_per_batch": stats.ratio(1000.0 * seconds, batches), **rounds[0]["ceiling_device"]}


def errors(rounds: list[dict]) -> int:
    """Failed requests over every paired phase (a non-zero count invalidates the ratios)."""
    return sum(r["loaded"][s]["errors"] for r in rounds for s in SIDES) + sum(r["light"]["errors"]
                                                                             for r in rounds)



def rows(plan: ModelPlan, rounds: list[dict]) -> list[Row]:
    """Table rows pooled over the rounds: tuned and baseline at c=8, tuned and batch-1 at c=1."""
    configs = {c.name: c for c in plan.configs}
    source = f"paired x{len(rounds)}"
    nan = float("nan")

    def row(name: str, concurrency: int, latencies: list[float], images: int, seconds: float,
            failed: int, mean_batch: float) -> Row:
        cfg = configs[name]
        summary = stats.summarize(latencies, failed, seconds)
        return Row(plan.name, name, "baseline" if cfg.baseline else "ours", cfg.batch_size,
                   cfg.max_batch_delay, cfg.workers, cfg.threads, "closed", concurrency, 0.0,
                   summary.requests, failed, stats.ratio(images, seconds), summary.p50_ms, summary.p95_ms,
                   summary.p99_ms, mean_batch, "", nan, nan, nan, nan, nan, source)

    out = []
    for side, name in (("tuned", plan.tuned), ("baseline", plan.baseline)):
        sides = [r["loaded"][side] for r in rounds]
        batches = [s["mean_batch"] for s in sides if s["mean_batch"] == s["mean_batch"]]
        out.append(row(name, plan.paired.concurrency, [ms for s in sides for ms in s["latencies_ms"]],
                       sum(s["images"] for s in sides), sum(s["seconds"] for s in sides),
                       sum(s["errors"] for s in sides), sum(batches) / len(batches) if batches else nan))
    for side, name in (("tuned", plan.tuned), ("bs1", plan.bs1)):
        latencies = [ms for r in rounds for ms in r["light"][side]]
        # Alternating one at a time, each side's throughput is not meaningful: NaN, not a made-up figure.
        out.append(row(name, 1, latencies, 0, nan, 0, nan))
    return out


def decomposition(rounds: list[dict]) -> dict[str, float]:
    """Split two ratios into the model's own speed in each process and what serving adds.

    throughput = images / forward-second (model speed) x forward-seconds / wall-second (duty), so
    efficiency = speed ratio x duty ratio: the speed ratio is where a slower process or minute shows up,
    the duty ratio is the serving path's share (1.0 = TorchServe keeps the model as busy as a plain loop).
    A c=1 latency is forward + the rest (queueing, delay, transport): holding the forwards equal leaves what
    the tuned config's batching delay costs a lone request.
    """
    return {**_loaded_split(rounds), **_light_split(rounds)}


def _loaded_split(rounds: list[dict]) -> dict[str, float]:
    speed, duty = {}, {}
    for side in ("ceiling", "tuned"):
        images, seconds, forward_s = (sum(r["loaded"][side][key] for r in rounds)
                                      for key in ("images", "seconds", "forward_s"))
        speed[side], duty[side] = stats.ratio(images, forward_s), stats.ratio(forward_s, seconds)
    waits = [ms for r in rounds for ms in r["loaded"]["tuned"].get("waits_ms", ())]
    return {"efficiency_speed": stats.ratio(speed["tuned"], speed["ceiling"]),
            "efficiency_duty": stats.ratio(duty["tuned"], duty["ceiling"]),
            "duty_served": duty["tuned"], "duty_inprocess": duty["ceiling"],
            "wait_served_ms": stats.percentile(waits, 50)}


def _light_split(rounds: list[dict]) -> dict[str, float]:
    # Per round (median latency - mean forward), then averaged: pooled p50s minus pooled forwards would mix
    # rounds of different speeds and can even come out negative.
    p50, rest, forward = {}, {}, {}
    for side in ("tuned", "bs1"):
        key = f"{side}_forward_ms"
        p50[side] = stats.percentile([ms for r in rounds for ms in r["light"][side]], 50)
        timed = [r["light"] for r in rounds if r["light"][side] and r["light"].get(key, 0) > 0]
        forward[side] = _mean([light[key] for light in timed])
        rest[side] = _mean([stats.percentile(light[side], 50) - light[key] for light in timed])
    return {"penalty_forward": stats.ratio(forward["tuned"], forward["bs1"]),
            "rest_tuned_ms": rest["tuned"], "rest_bs1_ms": rest["bs1"],
            "penalty_forward_equal": 1.0 + (rest["tuned"] - rest["bs1"]) / p50["bs1"]}
