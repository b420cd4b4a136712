"""What `make bench` runs: per model, the serving configs of the sweep and the load phases.

Two models keep the sweep inside the time budget on a 2-core CPU machine:
- `tiny`: config/co_dino_tiny.py, a forward of tens of ms: shows what TorchServe itself costs (overhead case).
- `r50_small`: the official Co-DINO R50 at test_scale 256x160: the real architecture, compute-bound.
The same plan runs on a GPU machine unchanged (the handler picks CUDA when TorchServe gives it a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from bench.variants import ServeConfig

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 4, 8)


@dataclass(frozen=True)
class Phase:
    """One load phase: closed loop at `concurrency`, or open loop at `rate_factor` x in-process capacity."""

    mode: str
    concurrency: int = 0
    rate_factor: float = 0.0
    max_requests: int = 100
    max_seconds: float = 10.0


@dataclass(frozen=True)
class PairedPlan:
    """The alternating rounds behind the headline ratios (bench/paired.py): sizes of each short phase."""

    rounds: int
    ceiling_batches: int  # in-process batches of the tuned batch size per round
    loaded_requests: int  # requests per closed-loop phase at `concurrency`
    loaded_seconds: float
    light_requests: int  # concurrency-1 requests per round, tuned and batch-1 alternating
    light_seconds: float
    concurrency: int = 8


@dataclass(frozen=True)
class ModelPlan:
    """A model, its handler settings, the configs to serve it with and the load to put on each."""

    name: str
    config: Path
    handler: dict
    configs: tuple[ServeConfig, ...]
    phases: tuple[Phase, ...]
    bs1: str  # config name of our handler at batch_size 1
    tuned: str  # config name of our handler at the tuned setting
    baseline: str  # config name of the mmdet-style baseline
    paired: PairedPlan
    ceiling_images: int = 8  # images of the one-shot batch-1 in-process measurement (the open loop's base)
    ceiling_seconds: float = 60.0


def _phases(seconds: float, requests: int, open_factors: tuple[float, ...]) -> tuple[Phase, ...]:
    closed = tuple(Phase("closed", concurrency=c, max_requests=requests * max(1, c // 2),
                         max_seconds=seconds) for c in CONCURRENCY)
    opened = tuple(Phase("open", rate_factor=f, max_requests=requests, max_seconds=seconds)
                   for f in open_factors)
    return closed + opened


def tiny_plan(scale: float = 1.0) -> ModelPlan:
    """Serving-overhead case: batch x delay x workers x threads, around the tuned point."""
    configs = (
        ServeConfig("bs1_d0_w1_t1", 1, 0, 1, 1),
        ServeConfig("bs4_d1_w1_t1", 4, 1, 1, 1),
        ServeConfig("bs4_d5_w1_t1", 4, 5, 1, 1),
        ServeConfig("bs4_d5_w1_t2", 4, 5, 1, 2),
        ServeConfig("bs8_d5_w1_t1", 8, 5, 1, 1),
        ServeConfig("bs4_d50_w1_t1", 4, 50, 1, 1),
        ServeConfig("bs1_d0_w2_t1", 1, 0, 2, 1),
        ServeConfig("baseline_bs4_d1_w1_t1", 4, 1, 1, 1, baseline=True),
    )
    # Tuned delay 1 ms, not 5: with the compiled op a tiny forward is ~20 ms, and 5 ms of delay cost a 1.26
    # low-traffic penalty in run 20261203-231015 (docs/tuning.md, rule 1: delay <= 5 % of one forward).
    return ModelPlan("tiny", REPO / "config" / "co_dino_tiny.py",
                     {"test_scale": [320, 192], "warmup_runs": 1, "score_threshold": 0.3}, configs,
                     _phases(3.0 * scale, 400, (0.5,)), bs1="bs1_d0_w1_t1", tuned="bs4_d1_w1_t1",
                     baseline="baseline_bs4_d1_w1_t1",
                     paired=PairedPlan(rounds=6, ceiling_batches=8, loaded_requests=32,
                                       loaded_seconds=8.0 * scale, light_requests=16,
                                       light_seconds=8.0 * scale),
                     ceiling_images=40, ceiling_seconds=8.0 * scale)


def r50_plan(scale: float = 1.0) -> ModelPlan:
    """Compute-bound case: our handler at batch 1 and tuned, the baseline, and the in-process ceiling."""
    configs = (
        ServeConfig("bs1_d0_w1_t1", 1, 0, 1, 1),
        ServeConfig("bs4_d10_w1_t1", 4, 10, 1, 1),
        ServeConfig("bs4_d20_w1_t1", 4, 20, 1, 1),
        ServeConfig("baseline_bs4_d10_w1_t1", 4, 10, 1, 1, baseline=True),
    )
    # Tuned delay 10 ms, not 20: the fast CPU path brought this forward to ~0.6 s, and 20 ms cost a 1.051
    # low-traffic penalty in run 20261203-231015 (docs/tuning.md, rule 1).
    # Concurrency 1 and 8 come from the paired rounds (every config the ratios need); the sweep adds the
    # loads in between, within the time budget.
    phases = (Phase("closed", concurrency=4, max_requests=4, max_seconds=20 * scale),
              Phase("open", rate_factor=0.5, max_requests=2, max_seconds=15 * scale))
    return ModelPlan("r50_small", REPO / "config" / "serve_co_dino_r50.py",
                     {"test_scale": [256, 160], "warmup_runs": 1, "score_threshold": 0.3}, configs, phases,
                     bs1="bs1_d0_w1_t1", tuned="bs4_d10_w1_t1", baseline="baseline_bs4_d10_w1_t1",
                     paired=PairedPlan(rounds=4, ceiling_batches=2, loaded_requests=8,
                                       loaded_seconds=60.0 * scale, light_requests=4,
                                       light_seconds=40.0 * scale),
                     ceiling_images=3, ceiling_seconds=20.0 * scale)


def all_plans(scale: float = 1.0, only: list[str] | None = None) -> dict[str, ModelPlan]:
    """Every model's plan; `only` keeps just the named configs (quick checks)."""
    plans = (tiny_plan(scale), r50_plan(scale))
    if only:
        plans = tuple(replace(p, configs=tuple(c for c in p.configs if c.name in only)) for p in plans)
    return {plan.name: plan for plan in plans}
