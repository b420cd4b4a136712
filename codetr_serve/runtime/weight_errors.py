"""Errors of the weights layer (checkpoint reading, safetensors export/load, state-dict application).

All of them mean the *server's* model file is wrong, never the client's request: they stop an archive
build or a worker's start-up and never become an HTTP reply, so they are not ServingErrors. Each message says
what is wrong and how to fix it; the codes are stable and name the failure in logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "WeightsError",
    "CheckpointNotFound",
    "CheckpointCorrupt",
    "UnsafeCheckpoint",
    "CheckpointFormatError",
    "ServingWeightsError",
    "StateDictMismatch",
    "format_keys",
]

MAX_LISTED_KEYS = 20

# How to turn a pickled checkpoint we refuse into one we accept, without ever unpickling it here.
CONVERT_HINT = (
    "Fix: on a trusted, isolated machine, load the file with the tool that produced it and re-save only the "
    "weights and class names, e.g. torch.save({'state_dict': ckpt['state_dict'], 'meta': {'dataset_meta': "
    "{'classes': classes}}}, 'clean.pth'); then convert that with `python -m codetr_serve.convert.export "
    "clean.pth OUT_DIR` (or archive.sh) and serve the safetensors directory."
)


def format_keys(keys: Iterable[str], limit: int = MAX_LISTED_KEYS) -> str:
    """`'a', 'b', ... (and N more)`: enough keys to act on without flooding the log."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = len(keys) - limit
    return f"{shown} (and {more} more)" if more > 0 else shown


class WeightsError(Exception):
    """Base class: the model weights cannot be used (raised while packing or while a worker starts)."""

    code = "weights_error"
    default_message = "The model weights cannot be used; re-export them."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message: str = message or self.default_message
        self.details: dict[str, Any] = details
        super().__init__(self.message)


class CheckpointNotFound(WeightsError):
    """The checkpoint path does not exist or is not a regular file."""

    code = "checkpoint_not_found"
    default_message = "The checkpoint file does not exist; check the path."


class CheckpointCorrupt(WeightsError):
    """The file is not a readable torch checkpoint (truncated download, wrong file, TorchScript archive)."""

    code = "checkpoint_corrupt"
    default_message = "The checkpoint is truncated or not a torch checkpoint; download it again."


class UnsafeCheckpoint(WeightsError):
    """The pickle references globals outside our allowlist; nothing in it was executed."""

    code = "checkpoint_unsafe"
    default_message = "The checkpoint holds Python objects outside the allowlist. " + CONVERT_HINT

    def __init__(self, path: str, offending: Iterable[str], reason: str = "", **details: Any) -> None:
        self.offending: tuple[str, ...] = tuple(sorted(set(offending)))
        names = format_keys(self.offending) if self.offending else "(see reason)"
        why = f" ({reason})" if reason else ""
        message = (
            f"Refused to load checkpoint {path}: it uses Python globals the allowlist refuses: "
            f"{names}{why}. Nothing from the file was executed. {CONVERT_HINT}"
        )
        super().__init__(message, path=path, offending=list(self.offending), reason=reason, **details)


class CheckpointFormatError(WeightsError):
    """The file loads, but its layout is not a state dict we understand."""

    code = "checkpoint_format"
    default_message = (
        "The checkpoint is not an mmengine checkpoint or a state dict of tensors; re-save it as "
        "{'state_dict': {...}, 'meta': {...}}."
    )


class ServingWeightsError(WeightsError):
    """The exported safetensors directory is missing, incomplete or does not match its JSON meta."""

    code = "serving_weights_invalid"
    default_message = "The serving weights directory is invalid; re-export it from the checkpoint."


class StateDictMismatch(WeightsError):
    """The weights do not fit the model the config builds (missing inference keys or shape mismatches)."""

    code = "state_dict_mismatch"
    default_message = "The weights do not match the model built from the config."
