"""bench.variants: servable variants of one no-archive folder share weights but nothing they change."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.variants import BASELINE_HANDLER, ServeConfig, make_variant


def base_folder(root: Path) -> Path:
    base = root / "base"
    (base / "MAR-INF").mkdir(parents=True)
    (base / "weights").mkdir()
    (base / "weights" / "model.safetensors").write_bytes(b"w" * 64)
    (base / "co_detr_handler.py").write_text("# ours\n")
    (base / "model-config.yaml").write_text("batchSize: 1\n")
    model = {"modelName": "base", "handler": "co_detr_handler.py", "configFile": "model-config.yaml"}
    (base / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": model}))
    return base


def manifest(folder: Path) -> dict:
    return json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())["model"]


def test_variants_do_not_write_through_hard_links(tmp_path: Path) -> None:
    base = base_folder(tmp_path)
    config = ServeConfig("bs4", 4, 5, 1, 1).model_config({})
    ours = make_variant(base, tmp_path / "store" / "ours", config)
    baseline = make_variant(base, tmp_path / "store" / "baseline", config, baseline=True)
    assert manifest(base) == {"modelName": "base", "handler": "co_detr_handler.py",
                              "configFile": "model-config.yaml"}
    assert manifest(ours)["modelName"] == "ours" and manifest(ours)["handler"] == "co_detr_handler.py"
    assert manifest(baseline)["handler"] == BASELINE_HANDLER.name
    assert (base / "model-config.yaml").read_text() == "batchSize: 1\n"
    config = yaml.safe_load((ours / "model-config.yaml").read_text())
    assert config["batchSize"] == 4 and config["handler"] == {"torch_threads": 1}
    # The weights are shared, not copied.
    weights = "weights/model.safetensors"
    assert (ours / weights).stat().st_ino == (base / weights).stat().st_ino
