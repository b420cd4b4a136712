"""Loading the serving form of the weights (``model.safetensors`` + ``model_meta.json``) into a model.

This is the worker side: it reads only safetensors and JSON (:func:`load_serving_weights`), which cannot
execute code, and :func:`apply_state_dict` checks that every key the inference path needs is present with the
right shape. Pickled ``.pth`` files are converted at archive time by :mod:`codetr_serve.convert.export`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import safetensors
import torch
from safetensors.torch import load_file
from torch import nn

from codetr_serve.runtime.weight_errors import ServingWeightsError, StateDictMismatch, format_keys

__all__ = [
    "WEIGHTS_FILE", "META_FILE", "FORMAT", "REQUIRED_PREFIXES", "ServingWeightPaths", "KeyReport",
    "file_sha256", "load_serving_weights", "apply_state_dict",
]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model_meta.json"
FORMAT = "codetr-serve-weights/1"
# Co-DINO inference runs backbone -> neck -> query_head (eval_module='detr'); rpn/roi/bbox heads train only.
REQUIRED_PREFIXES = ("backbone.", "neck.", "query_head.")
_REEXPORT_HINT = "Re-export it: python -m codetr_serve.convert.export CHECKPOINT DIR (or archive.sh)."


class ServingWeightPaths(NamedTuple):
    """The two files :func:`export_safetensors` writes."""

    weights: Path
    meta: Path


def file_sha256(path: Path, chunk: int = 1 << 22,
                progress: Callable[[int, int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks so multi-GB checkpoints don't need the memory.

    ``progress(bytes_done, bytes_total)`` is called after each chunk when given.
    """
    digest, total, done = hashlib.sha256(), Path(path).stat().st_size, 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def _read_meta(meta_path: Path) -> dict:
    """Parse and sanity-check ``model_meta.json``."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ServingWeightsError(f"{meta_path} is unreadable ({err}). {_REEXPORT_HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ServingWeightsError(f"{meta_path} has format {found!r}, expected {FORMAT!r}. {_REEXPORT_HINT}")
    if not isinstance(meta.get("num_tensors"), int):
        raise ServingWeightsError(f"{meta_path} lacks 'num_tensors'. {_REEXPORT_HINT}")
    return meta


def load_serving_weights(
    weights_dir: str | Path, *, device: str = "cpu", verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(state_dict, meta)`` from an exported directory: safetensors + JSON only, no pickle at all.

    With ``verify`` the safetensors file's sha256 must equal the one recorded at export (catches truncated
    copies and files swapped after export; costs one read of the file).
    """
    weights_dir = Path(weights_dir)
    weights_path, meta_path = weights_dir / WEIGHTS_FILE, weights_dir / META_FILE
    missing = [p.name for p in (weights_path, meta_path) if not p.is_file()]
    if missing:
        raise ServingWeightsError(
            f"Serving weights dir {weights_dir} lacks {', '.join(missing)}. {_REEXPORT_HINT}")
    meta = _read_meta(meta_path)
    if verify and file_sha256(weights_path) != meta.get("safetensors_sha256"):
        raise ServingWeightsError(
            f"{weights_path} does not match the sha256 recorded in {META_FILE}: it was truncated or replaced "
            f"after export. {_REEXPORT_HINT}")
    try:
        state_dict = load_file(str(weights_path), device=device)
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ServingWeightsError(f"{weights_path} is unreadable ({err}). {_REEXPORT_HINT}") from None
    if len(state_dict) != meta["num_tensors"]:
        raise ServingWeightsError(
            f"{weights_path} holds {len(state_dict)} tensors but {META_FILE} says {meta['num_tensors']}. "
            f"{_REEXPORT_HINT}")
    return state_dict, meta


Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # (key, shape in the weights, shape in the model)


@dataclass(frozen=True)
class KeyReport:
    """How a state dict matched a model."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[Mismatch, ...]
    required_prefixes: tuple[str, ...] = REQUIRED_PREFIXES

    @property
    def missing_required(self) -> tuple[str, ...]:
        """Missing keys on the inference path: the model would run with random weights there."""
        return tuple(k for k in self.missing if k.startswith(self.required_prefixes))

    @property
    def ok(self) -> bool:
        """True when nothing the inference path needs is missing and no shape differs."""
        return not self.missing_required and not self.mismatched

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        return (f"loaded {len(self.loaded)}/{total} model keys; missing {len(self.missing)} "
                f"({len(self.missing_required)} on the inference path); unexpected {len(self.unexpected)}; "
                f"shape mismatches {len(self.mismatched)}")


def compare_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    required_prefixes: Sequence[str] = REQUIRED_PREFIXES,
) -> KeyReport:
    """Match ``state_dict`` against the model's own keys and shapes, without loading anything."""
    expected = model.state_dict()
    loaded, mismatched = [], []
    for key, target in expected.items():
        if key not in state_dict:
            continue
        shape = tuple(state_dict[key].shape)
        if shape == tuple(target.shape):
            loaded.append(key)
        else:
            mismatched.append((key, shape, tuple(target.shape)))
    return KeyReport(
        loaded=tuple(loaded),
        missing=tuple(k for k in expected if k not in state_dict),
        unexpected=tuple(k for k in state_dict if k not in expected),
        mismatched=tuple(mismatched),
        required_prefixes=tuple(required_prefixes),
    )


def _mismatch_message(report: KeyReport) -> str:
    parts = []
    if report.missing_required:
        parts.append(f"{len(report.missing_required)} keys of the inference path "
                     f"({', '.join(report.required_prefixes)}) are missing from the weights: "
                     f"{format_keys(report.missing_required)}")
    if report.mismatched:
        shapes = [f"{k}: weights {list(a)} vs model {list(b)}" for k, a, b in report.mismatched]
        parts.append(f"{len(report.mismatched)} shapes differ: {format_keys(shapes)}")
    return ("; ".join(parts) + f" ({report}). The weights were trained for another config (backbone, number "
            "of classes or queries); pack them with the config they were trained with.")


def apply_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    required_prefixes: Sequence[str] = REQUIRED_PREFIXES,
) -> KeyReport:
    """Load ``state_dict`` into ``model`` (strict=False) and return what matched.

    Raises :class:`StateDictMismatch` *before touching the model* when a key under ``required_prefixes`` is
    missing or any shape differs; missing training-only keys (rpn_head/roi_head/bbox_head) and unexpected
    keys are only reported.
    """
    report = compare_state_dict(model, state_dict, required_prefixes)
    if not report.ok:
        raise StateDictMismatch(_mismatch_message(report), missing=list(report.missing_required),
                                mismatched=[k for k, _, _ in report.mismatched])
    model.load_state_dict({k: state_dict[k] for k in report.loaded}, strict=False)
    return report
