"""Serving form of the weights: ``model.safetensors`` + ``model_meta.json``, and loading them into a model.

A pickled ``.pth`` is read once, on the machine that packs the model (:func:`export_safetensors`); the
server then reads only safetensors and JSON (:func:`load_serving_weights`), which cannot execute code, and
:func:`apply_state_dict` checks that every key the inference path needs is present with the right shape.

CLI: ``python -m codetr_serve.weights export CHECKPOINT OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from codetr_serve.checkpoint import Checkpoint, file_sha256, read_checkpoint
from codetr_serve.weight_errors import (
    CheckpointFormatError,
    ServingWeightsError,
    StateDictMismatch,
    WeightsError,
    format_keys,
)

__all__ = [
    "WEIGHTS_FILE", "META_FILE", "FORMAT", "REQUIRED_PREFIXES", "ServingWeightPaths", "KeyReport",
    "export_safetensors", "load_serving_weights", "apply_state_dict",
]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model_meta.json"
FORMAT = "codetr-serve-weights/1"
# Co-DINO inference runs backbone -> neck -> query_head (eval_module='detr'); rpn/roi/bbox heads train only.
REQUIRED_PREFIXES = ("backbone.", "neck.", "query_head.")
_REEXPORT_HINT = "Re-export it: python -m codetr_serve.weights export CHECKPOINT DIR (or archive.sh)."


class ServingWeightPaths(NamedTuple):
    """The two files :func:`export_safetensors` writes."""

    weights: Path
    meta: Path


def _created_by() -> str:
    try:
        ours = metadata.version("codetr-serve")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        ours = "unknown"
    return f"codetr-serve {ours} (torch {torch.__version__}, safetensors {safetensors.__version__})"


def _serving_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory (safetensors refuses aliases, e.g. tied weights)."""
    out: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in state_dict.items():
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise CheckpointFormatError(f"Tensor {name!r} is sparse or quantized; export dense weights.")
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storages and t.numel() > 0:
            t = t.clone()  # an alias of an earlier tensor: give it its own bytes (values are identical)
        seen_storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _dtype_counts(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``{"float32": 1234, ...}``: how many tensors of each dtype (a quick check after conversions)."""
    counts = Counter(str(t.dtype).removeprefix("torch.") for t in tensors.values())
    return dict(sorted(counts.items()))


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file + rename so a crash never leaves a half-written file under the final name."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def export_safetensors(checkpoint: Checkpoint, out_dir: str | Path) -> ServingWeightPaths:
    """Write ``model.safetensors`` (the state dict) and ``model_meta.json`` (classes, provenance)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = _serving_tensors(checkpoint.state_dict)
    weights_path, meta_path = out_dir / WEIGHTS_FILE, out_dir / META_FILE
    _atomic_write(weights_path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    meta = {
        "format": FORMAT,
        "classes": list(checkpoint.classes) if checkpoint.classes is not None else None,
        "source": {
            "file": checkpoint.source.name if checkpoint.source is not None else None,
            "sha256": checkpoint.sha256,
        },
        "num_tensors": len(tensors),
        "num_elements": sum(t.numel() for t in tensors.values()),
        "dtypes": _dtype_counts(tensors),
        "safetensors_sha256": file_sha256(weights_path),
        "created_by": _created_by(),
    }
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    return ServingWeightPaths(weights_path, meta_path)


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


def main(argv: Sequence[str] | None = None) -> int:
    """``export CHECKPOINT OUT_DIR``: read a .pth safely and write the serving form next to it."""
    parser = argparse.ArgumentParser(prog="python -m codetr_serve.weights",
                                     description="Convert checkpoints into the serving form.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="read an mmengine .pth safely; write safetensors + JSON meta")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        checkpoint = read_checkpoint(args.checkpoint)
        paths = export_safetensors(checkpoint, args.out_dir)
    except WeightsError as err:  # a clear one-line reason beats a traceback for an operator
        print(f"error [{err.code}]: {err.message}")
        return 2
    print(f"wrote {paths.weights} and {paths.meta} ({len(checkpoint.state_dict)} tensors, "
          f"classes: {len(checkpoint.classes) if checkpoint.classes else 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
