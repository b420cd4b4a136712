"""Read mmengine / MMDetection checkpoints without executing anything pickled in them.

``read_checkpoint`` accepts official mmengine ``.pth`` files (``{'meta', 'state_dict', ...}``; the training
state under ``optimizer``/``message_hub``/``param_schedulers`` is dropped) and bare state dicts, strips a
DataParallel ``module.`` prefix, and loads with ``torch.load(weights_only=True)`` plus the explicit allowlist
of :mod:`.checkpoint_allowlist`. Anything outside it raises :class:`UnsafeCheckpoint` naming the
offending globals; the file is statically scanned first, so for zip checkpoints nothing is even unpickled.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from codetr_serve.convert.checkpoint_allowlist import SAFE_GLOBALS, materialize
from codetr_serve.runtime.weight_errors import (
    CheckpointCorrupt,
    CheckpointFormatError,
    CheckpointNotFound,
    UnsafeCheckpoint,
    format_keys,
)
from codetr_serve.runtime.weights import file_sha256

__all__ = ["Checkpoint", "read_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # legacy (pre-1.6, non-zip) torch files are a pickle stream from the first byte
_TRAINING_KEYS = frozenset({"optimizer", "message_hub", "param_schedulers"})
_MODULE_PREFIX = "module."
# torch's weights-only unpickler names the refused global in these phrasings (legacy, non-zip files).
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
# ...and refuses other non-data operations (calls, object builds) with these.
_REFUSAL_IN_MESSAGE = re.compile(r"Trying to call reduce|Can only (?:build|create|append|extend|set)")


@dataclass(frozen=True)
class Checkpoint:
    """Weights and metadata of one checkpoint file.

    ``classes`` comes from ``meta['dataset_meta']['classes']`` (mmdet 3.x) or ``meta['CLASSES']`` (2.x).
    ``source`` is the file read (None for weights built in memory, e.g. seeded random ones).
    """

    state_dict: dict[str, torch.Tensor]
    meta: dict
    classes: tuple[str, ...] | None
    sha256: str
    source: Path | None = field(default=None, compare=False)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely; raises a :class:`~codetr_serve.runtime.weight_errors.WeightsError`."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise CheckpointNotFound(f"Checkpoint {path} {what}; pass the path of the .pth file.", path=str(path))
    digest = file_sha256(path)
    raw = _safe_load(path)
    state_dict, meta = _split(raw, path)
    return Checkpoint(state_dict=state_dict, meta=meta, classes=_classes(meta, path), sha256=digest,
                      source=path)


def _safe_load(path: Path) -> Any:
    """torch.load(weights_only=True) under our allowlist; every failure becomes a typed error."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    is_zip = head == _ZIP_MAGIC
    if not (is_zip or head.startswith(_PICKLE_PROTO)):
        raise _corrupt(path, ValueError("neither a zip archive nor a pickle stream"))
    # The allowlist is installed only for this call: it must not widen other torch.load calls for long.
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        if is_zip:
            _prescan(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except UnsafeCheckpoint as err:  # raised by our reconstructors: add the path
            raise UnsafeCheckpoint(str(path), err.offending, err.details.get("reason", "")) from None
        except pickle.UnpicklingError as err:
            raise _classify_unpickling_error(path, str(err)) from None
        except Exception as err:  # any other failure on untrusted bytes means "malformed"
            raise _corrupt(path, err) from None


def _prescan(path: Path) -> None:
    """List every pickle GLOBAL outside the allowlist statically, before anything is unpickled."""
    try:
        offending = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except pickle.UnpicklingError as err:
        raise _classify_unpickling_error(path, str(err)) from None
    except (RuntimeError, ValueError, EOFError, OSError) as err:
        raise _corrupt(path, err) from None
    if offending:
        raise UnsafeCheckpoint(str(path), offending)


def _classify_unpickling_error(path: Path, message: str) -> Exception:
    """An UnpicklingError is either a refused global (name it) or a damaged pickle stream."""
    names = _GLOBAL_IN_MESSAGE.findall(message)
    if names:
        return UnsafeCheckpoint(str(path), names)
    reason = message.split("WeightsUnpickler error:")[-1].strip()
    reason = reason.splitlines()[0][:300] if reason else "unpickling failed"
    if _REFUSAL_IN_MESSAGE.search(message):
        return UnsafeCheckpoint(str(path), [], reason)
    # torch's safe loader reads only protocol-2 opcodes (torch.save's default), so this is not always damage.
    if "Unsupported operand" in reason:
        reason += "; damaged, or saved with pickle_protocol > 2: re-save it with the default protocol"
    return _corrupt(path, pickle.UnpicklingError(reason))


def _corrupt(path: Path, err: BaseException) -> CheckpointCorrupt:
    detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return CheckpointCorrupt(
        f"Checkpoint {path} is truncated, damaged or not a torch checkpoint ({detail}). Download or copy it "
        "again and compare its sha256 with the published one.",
        path=str(path),
    )


def _split(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) from an mmengine checkpoint or a bare state dict."""
    if not isinstance(raw, Mapping):
        raise CheckpointFormatError(
            f"Checkpoint {path} holds a {type(raw).__name__}, not a dict; save a state dict or an mmengine "
            "checkpoint {'state_dict': ..., 'meta': ...}.", path=str(path))
    if "state_dict" in raw:
        state, meta = raw["state_dict"], raw.get("meta") or {}
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, meta = raw, {}
    else:
        extra = sorted(str(k) for k in raw if k not in _TRAINING_KEYS)
        raise CheckpointFormatError(
            f"Checkpoint {path} has no 'state_dict' and is not a bare state dict (top-level keys: "
            f"{format_keys(extra)}); re-save it as {{'state_dict': ..., 'meta': ...}}.", path=str(path))
    if not isinstance(meta, Mapping):
        raise CheckpointFormatError(f"Checkpoint {path}: 'meta' is a {type(meta).__name__}, not a dict.")
    return _clean_state_dict(state, path), dict(materialize(dict(meta)))


def _clean_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """Check that every entry is a named tensor and drop DataParallel's ``module.`` prefix."""
    if not isinstance(state, Mapping) or not state:
        raise CheckpointFormatError(f"Checkpoint {path}: 'state_dict' is empty or not a dict.",
                                    path=str(path))
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointFormatError(
            f"Checkpoint {path}: {len(bad)} state_dict entries are not named tensors: {format_keys(bad)}; "
            "re-save the state dict with tensors only.", path=str(path))
    cleaned: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key.removeprefix(_MODULE_PREFIX)
        if name in cleaned:
            raise CheckpointFormatError(
                f"Checkpoint {path}: key {key!r} collides with {name!r} once the 'module.' prefix is "
                "stripped; keep only one copy of the weights.", path=str(path))
        cleaned[name] = tensor
    return cleaned


def _classes(meta: Mapping, path: Path) -> tuple[str, ...] | None:
    """Class names from mmdet 3.x ``dataset_meta`` (or 2.x ``CLASSES``), validated as strings."""
    dataset_meta = meta.get("dataset_meta")
    found = dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None
    if found is None:
        found = meta.get("CLASSES")
    if found is None:
        return None
    if not isinstance(found, list | tuple) or not all(isinstance(c, str) for c in found):
        raise CheckpointFormatError(
            f"Checkpoint {path}: meta classes must be a sequence of strings, got {found!r:.200}.",
            path=str(path))
    return tuple(found)
