"""Serving configs: no annotation loading, one test-scale knob, and a working override path."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from codetr_serve.models import apply_test_scale

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SERVING = {
    "serve_co_dino_swin_l_o365tococo.py": (2048, 1280),
    "serve_co_dino_r50.py": (1333, 800),
    "co_dino_tiny.py": (320, 192),
}


def step_types(pipeline: list) -> list[str]:
    return [str(step["type"]).split(".")[-1] for step in pipeline]


def resize_scales(cfg: Config) -> list[tuple[int, int]]:
    pipelines = [cfg.test_pipeline, cfg.test_dataloader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline]
    return [tuple(step["scale"]) for p in pipelines for step in p if step_types([step]) == ["Resize"]]


@pytest.mark.parametrize(("name", "scale"), SERVING.items())
def test_serving_pipeline_has_no_annotations_and_uses_test_scale(name: str, scale: tuple[int, int]) -> None:
    cfg = Config.fromfile(str(CONFIG_DIR / name))
    assert tuple(cfg.test_scale) == scale
    for pipeline in (cfg.test_pipeline, cfg.test_dataloader.dataset.pipeline):
        types = step_types(pipeline)
        assert "LoadAnnotations" not in types
        assert types == ["LoadImageFromFile", "Resize", "PackDetInputs"]
    assert set(resize_scales(cfg)) == {scale}


def test_swin_l_config_differs_from_r50_only_where_the_checkpoints_do() -> None:
    r50 = Config.fromfile(str(CONFIG_DIR / "serve_co_dino_r50.py")).model.to_dict()
    swin = Config.fromfile(str(CONFIG_DIR / "serve_co_dino_swin_l_o365tococo.py")).model.to_dict()
    assert swin["backbone"]["type"] == "SwinTransformer" and "depth" not in swin["backbone"]
    assert swin["neck"]["in_channels"] == [192, 384, 768, 1536]
    assert swin["query_head"]["dn_cfg"]["box_noise_scale"] == 0.4
    assert swin["query_head"]["dn_cfg"]["group_cfg"]["num_dn_queries"] == 500
    assert swin["query_head"]["transformer"]["encoder"]["with_cp"] == 6
    for differs in (swin, r50):
        differs.pop("backbone"), differs["neck"].pop("in_channels"), differs["query_head"].pop("dn_cfg")
        differs["query_head"]["transformer"]["encoder"].pop("with_cp")
    assert swin == r50  # every head, the preprocessor and the test settings are shared


def test_cfg_options_override_reaches_the_pipeline() -> None:
    cfg = Config.fromfile(str(CONFIG_DIR / "serve_co_dino_swin_l_o365tococo.py"))
    cfg.merge_from_dict({"test_scale": [1280, 720]})  # what --cfg-options test_scale=1280,720 gives
    assert set(resize_scales(cfg)) == {(2048, 1280)}  # parsed configs do not re-evaluate
    apply_test_scale(cfg)
    assert cfg.test_scale == (1280, 720)
    assert set(resize_scales(cfg)) == {(1280, 720)}


def test_apply_test_scale_explicit_and_errors() -> None:
    cfg = Config.fromfile(str(CONFIG_DIR / "serve_co_dino_r50.py"))
    apply_test_scale(cfg, (800, 480))
    assert set(resize_scales(cfg)) == {(800, 480)}
    with pytest.raises(ValueError, match="two positive ints"):
        apply_test_scale(cfg, (800,))
    with pytest.raises(KeyError):
        apply_test_scale(Config(dict(test_pipeline=[])))
    with pytest.raises(ValueError, match="no Resize"):
        apply_test_scale(Config(dict(test_pipeline=[dict(type="PackDetInputs")])), (10, 10))
