"""Turn a config (+ checkpoint) into the model directory the handler serves from.

The directory holds `model_config.py` (the config flattened to one file, so `_base_` chains need not travel)
and `weights/` (safetensors + JSON meta), which the server reads without unpickling anything. Checkpoints are
validated against the model the config builds before anything is written.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from codetr_serve.convert.checkpoint import Checkpoint, read_checkpoint
from codetr_serve.convert.export import export_safetensors
from codetr_serve.runtime.model_loader import load_config
from codetr_serve.runtime.weights import apply_state_dict

CONFIG_NAME = "model_config.py"
WEIGHTS_DIR = "weights"


def random_checkpoint(cfg, seed: int) -> Checkpoint:
    """Seeded random weights for demos and tests, shaped exactly like the model the config builds."""
    from mmdet.registry import MODELS

    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    digest = hashlib.sha256(f"random-weights:seed={seed}".encode()).hexdigest()
    return Checkpoint(state_dict=state_dict, meta={}, classes=None, sha256=digest)


def validate_against_config(cfg, checkpoint: Checkpoint):
    """Load the weights into a freshly built model; raises naming the missing/mismatched keys."""
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    return apply_state_dict(model, checkpoint.state_dict)


def pack_model_dir(config_path: Path, checkpoint_path: Path | None, out_dir: Path, seed: int = 0) -> Path:
    """Write model_config.py + weights/ into `out_dir` (emptied first); returns `out_dir`."""
    cfg = load_config(Path(config_path))
    if checkpoint_path is None:
        checkpoint = random_checkpoint(cfg, seed)
    else:
        checkpoint = read_checkpoint(Path(checkpoint_path))
        validate_against_config(cfg, checkpoint)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / WEIGHTS_DIR).mkdir(parents=True)
    cfg.dump(str(out_dir / CONFIG_NAME))
    export_safetensors(checkpoint, out_dir / WEIGHTS_DIR)
    return out_dir
