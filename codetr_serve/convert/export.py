"""Convert a checkpoint into the serving form: ``model.safetensors`` + ``model_meta.json`` (archive time).

A pickled ``.pth`` is read once, safely (:mod:`.checkpoint`), on the machine that packs the
model; the worker then loads only the files written here (:mod:`codetr_serve.runtime.weights`).

CLI: ``python -m codetr_serve.convert.export CHECKPOINT OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import save_file

from codetr_serve.convert.checkpoint import Checkpoint, read_checkpoint
from codetr_serve.runtime.weight_errors import CheckpointFormatError, WeightsError
from codetr_serve.runtime.weights import (
    FORMAT,
    META_FILE,
    WEIGHTS_FILE,
    ServingWeightPaths,
    file_sha256,
)

__all__ = ["export_safetensors"]


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




def main(argv: Sequence[str] | None = None) -> int:
    """``export CHECKPOINT OUT_DIR``: read a .pth safely and write the serving form next to it."""
    parser = argparse.ArgumentParser(prog="python -m codetr_serve.convert.export",
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
