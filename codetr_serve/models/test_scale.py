"""Apply a config's ``test_scale`` to its test pipelines.

mmengine evaluates a Python config once, when it is parsed, so ``test_pipeline`` holds the value
``test_scale`` had at that moment; overriding ``test_scale`` later (``--cfg-options``,
``Config.merge_from_dict``) does not reach the ``Resize`` steps. This helper closes that gap so the
serving configs have one knob for the inference resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmengine.config import Config

# Where a loaded mmdet config keeps test-time pipelines; the dataloader entries are what
# mmdet's inference_detector and the test loop actually read.
_PIPELINE_PATHS = (
    ("test_pipeline",),
    ("test_dataloader", "dataset", "pipeline"),
    ("val_dataloader", "dataset", "pipeline"),
)


def _lookup(cfg: Any, path: Sequence[str]) -> Any:
    """Follow ``path`` through nested config dicts; None when any step is missing."""
    node = cfg
    for key in path:
        if not hasattr(node, "get") or node.get(key) is None:
            return None
        node = node.get(key)
    return node


def _as_scale(scale: Sequence[int]) -> tuple[int, int]:
    """Normalise a (long cap, short cap) pair; cfg-options deliver lists, configs tuples."""
    if len(scale) != 2 or any(int(v) <= 0 for v in scale):
        raise ValueError(f"test_scale must be two positive ints, got {scale!r}")
    return int(scale[0]), int(scale[1])


def apply_test_scale(cfg: Config, scale: Sequence[int] | None = None) -> Config:
    """Set ``scale`` (default: ``cfg.test_scale``) on every ``Resize`` of the test pipelines.

    Args:
        cfg: A loaded config (modified in place and returned).
        scale: (long-side cap, short-side cap) for keep_ratio resizing; when given it is
            also stored as ``cfg.test_scale``.

    Returns:
        ``cfg``.

    Raises:
        KeyError: neither ``scale`` nor ``cfg.test_scale`` is set.
        ValueError: the scale is malformed, or no test pipeline contains a ``Resize`` step.
    """
    if scale is None:
        if cfg.get("test_scale") is None:
            raise KeyError("config has no `test_scale`; pass scale=(long, short)")
        scale = cfg.test_scale
    cfg.test_scale = _as_scale(scale)
    touched = 0
    for path in _PIPELINE_PATHS:
        for step in _lookup(cfg, path) or []:
            if str(step.get("type", "")).split(".")[-1] == "Resize":
                step["scale"] = cfg.test_scale
                touched += 1
    if touched == 0:
        raise ValueError("no Resize step found in the config's test pipelines")
    return cfg
