"""Shared fixtures: a tiny Co-DINO with random weights, packed the way archive.sh packs it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "config" / "co_dino_tiny.py"


def encode_image(width: int, height: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A noisy RGB test image of the given size, encoded."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir like TorchServe unpacks: flattened config + safetensors of seeded random weights."""
    from codetr_serve.convert.model_dir import pack_model_dir

    out = tmp_path_factory.mktemp("tiny_model")
    pack_model_dir(config_path=TINY_CONFIG, checkpoint_path=None, out_dir=out, seed=0)
    return out
