"""Build the detector from an mmdet config and load its serving weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from codetr_serve.ops import onednn_linear
from codetr_serve.ops.msda import report_serving_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedDetector:
    """A detector in eval mode on its device, with what the core needs to know about it."""

    model: nn.Module
    class_names: tuple[str, ...]
    max_per_img: int
    pad_size_divisor: int


def load_config(config_path: Path) -> Config:
    """Parse the config; `custom_imports` (our `codetr_serve.models`) register the Co-DETR types."""
    if not config_path.is_file():
        raise FileNotFoundError(f"model config {config_path} not found: pack it with archive.sh --config")
    cfg = Config.fromfile(str(config_path))
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return cfg


def build_detector(cfg: Config, weights_dir: Path | None, device: str, seed: int = 0) -> LoadedDetector:
    """Build the model from `cfg`; load safetensors from `weights_dir`, or keep seeded random weights."""
    from mmdet.registry import MODELS

    torch.manual_seed(seed)  # random-weight demos and tests stay reproducible
    model = MODELS.build(cfg.model)
    meta: dict = {}
    if weights_dir is not None:
        from codetr_serve.runtime.weights import apply_state_dict, load_serving_weights

        state_dict, meta = load_serving_weights(weights_dir)
        report = apply_state_dict(model, state_dict)
        log.info("weights loaded from %s: %s", weights_dir, report)
    else:
        log.warning("no weights_dir: serving RANDOM weights (demo/test mode)")
    model.to(device).eval()
    onednn_linear.adopt(model)  # its linear layers follow the oneDNN switch (CPU float32 inference only)
    report_serving_path(device)  # one log line and the CoDetrDeformableAttentionPath gauge
    return LoadedDetector(model=model, class_names=class_names_for(cfg, meta),
                          max_per_img=_max_per_img(cfg),
                          pad_size_divisor=_pad_size_divisor(cfg))


def class_names_for(cfg: Config, weights_meta: dict) -> tuple[str, ...]:
    """Class names: the checkpoint's dataset meta first, else the config's, else the dataset class's."""
    if weights_meta.get("classes"):
        return tuple(weights_meta["classes"])
    dataset = cfg.get("test_dataloader", {}).get("dataset", {})
    for metainfo in (cfg.get("metainfo"), dataset.get("metainfo")):
        if metainfo and metainfo.get("classes"):
            return tuple(metainfo["classes"])
    if dataset.get("type"):
        from mmdet.registry import DATASETS

        dataset_cls = DATASETS.get(dataset["type"])
        classes = getattr(dataset_cls, "METAINFO", {}).get("classes")
        if classes:
            return tuple(classes)
    return ()


def _pad_size_divisor(cfg: Config) -> int:
    return int(cfg.model.get("data_preprocessor", {}).get("pad_size_divisor", 1))


def _max_per_img(cfg: Config) -> int:
    test_cfg = cfg.model.get("query_head", {}).get("test_cfg") or cfg.model.get("test_cfg") or {}
    if isinstance(test_cfg, list | tuple):
        test_cfg = test_cfg[0] if test_cfg else {}
    return int(test_cfg.get("max_per_img", 300))
