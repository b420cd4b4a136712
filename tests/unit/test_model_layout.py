"""Models built from our serving configs must have the official checkpoints' state-dict layout.

The reference layouts (tests/data/reference_layouts/*.tsv) list every state-dict key, shape and
dtype of the models the upstream Co-DETR code builds from the official configs. An exact match is what
lets official checkpoints load with ``strict=True`` into our implementation.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"
LAYOUT_DIR = REPO / "tests" / "data" / "reference_layouts"
R50 = "codino_r50_official_layout.tsv"
SWIN_L = "codino_swin_l_o365tococo_official_layout.tsv"

Layout = dict[str, tuple[str, str]]

# Our serving configs restate the official checkpoints' models; these layouts (from the official
# checkpoints) are what they must reproduce for an official checkpoint to load strictly.
CASES = [
    ("serve_co_dino_r50.py", R50),
    ("serve_co_dino_swin_l_o365tococo.py", SWIN_L),
]


def read_layout(path: Path) -> Layout:
    """Parse a `key<TAB>shape<TAB>dtype` table (shape like 256x3x7x7, or `scalar`)."""
    rows = path.read_text().splitlines()
    assert rows[0].split("\t") == ["key", "shape", "dtype"], f"unexpected header in {path}"
    layout: Layout = {}
    for row in rows[1:]:
        key, shape, dtype = row.split("\t")
        layout[key] = (shape, dtype)
    return layout


def model_layout(model: torch.nn.Module) -> Layout:
    """The same table for a live model."""
    return {
        key: ("x".join(str(d) for d in value.shape) or "scalar", str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    }


def drop_pretrained(node: Any) -> None:
    """Remove every ``init_cfg=dict(type='Pretrained', ...)`` so building never downloads."""
    if isinstance(node, dict):
        init_cfg = node.get("init_cfg")
        if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
            node["init_cfg"] = None
        for value in node.values():
            drop_pretrained(value)
    elif isinstance(node, list | tuple):
        for value in node:
            drop_pretrained(value)


def build_official(config_name: str) -> torch.nn.Module:
    """Build (without init_weights) the model of one of our configs, as mmdet tools would."""
    cfg = Config.fromfile(str(CONFIG_DIR / config_name))  # custom_imports registers codetr_serve.models
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    drop_pretrained(cfg.model)
    return MODELS.build(cfg.model)


def describe_diff(expected: Layout, actual: Layout, limit: int = 15) -> str:
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    changed = [
        f"{k}: {actual[k]} != {expected[k]}" for k in expected if actual.get(k, expected[k]) != expected[k]
    ]
    return (
        f"missing {len(missing)}: {missing[:limit]}\nunexpected {len(unexpected)}: {unexpected[:limit]}\n"
        f"changed {len(changed)}: {changed[:limit]}"
    )


@pytest.mark.parametrize(("config_name", "layout_name"), CASES)
def test_state_dict_matches_official_layout(config_name: str, layout_name: str) -> None:
    expected = read_layout(LAYOUT_DIR / layout_name)
    model = build_official(config_name)
    actual = model_layout(model)
    del model
    gc.collect()  # Swin-L is ~0.9 GB of float32; free it before the next case
    assert actual == expected, f"{config_name} vs {layout_name}:\n{describe_diff(expected, actual)}"
    # Same order too: harmless for loading, but a cheap sign the modules are built like upstream.
    assert list(actual) == list(expected)
