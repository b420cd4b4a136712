"""The pickle allowlist used to read mmengine checkpoints with ``torch.load(weights_only=True)``.

Official mmengine checkpoints carry, besides tensors, a few non-torch objects (found by saving a checkpoint
with mmengine 0.10.7's own ``Runner``/``CheckpointHook`` and listing its pickle globals):

* numpy arrays, scalars and dtypes (``HistoryBuffer`` logs in ``message_hub``, numpy values in ``meta``);
* ``mmengine.logging.history_buffer.HistoryBuffer`` and, through its ``__getstate__``, references to its
  statistics methods pickled as ``builtins.getattr(HistoryBuffer, 'min')``;
* ``mmengine.config.config.ConfigDict`` when a dataset's metainfo came from a config.

None of the real callables is put on the allowlist. Each GLOBAL name is mapped to a small reconstructor of
ours that validates its arguments and only builds data: numpy values are rebuilt with ``np.frombuffer`` from
a validated plain dtype and an exact byte count (numpy's own pickle hooks, which trust their input, never
run), mmengine classes become :class:`InertObject` records (no mmengine code runs), and ``getattr`` only
yields an :class:`InertReference` name for such records. Everything else stays refused by torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from codetr_serve.runtime.weight_errors import CheckpointFormatError, UnsafeCheckpoint

# Plain dtypes only: bool, ints, floats, complex, fixed-size str/bytes. Object ('O'), structured and
# sub-array dtypes are refused because they would let the pickle smuggle in arbitrary Python objects.
_DTYPE_SPEC = re.compile(r"b1|[iu][1248]|f[248]|c(?:8|16)|[US][0-9]{1,6}")
_BYTE_ORDER_STRS = ("<", ">", "|", "=")
_MAX_NDIM = 32
_MAX_DEPTH = 64


def _is_int(value: Any, expected: int) -> bool:
    return type(value) is int and value == expected


def _refuse(global_name: str, reason: str) -> UnsafeCheckpoint:
    # Raised from inside the unpickler: torch only rewraps UnpicklingError, so our typed error propagates.
    return UnsafeCheckpoint("<checkpoint>", [global_name], reason)


class InertObject:
    """Stand-in for an allowlisted foreign class: keeps the pickled args/state as data, runs no code."""

    original: ClassVar[str] = "?"

    def __new__(cls, *args: Any) -> InertObject:
        """Called by NEWOBJ/REDUCE: record the constructor args instead of running the real class."""
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any) -> None:
        """Accept (and ignore) the args a REDUCE passes; ``__new__`` already stored them."""

    def __setstate__(self, state: Any) -> None:
        """Called by BUILD: keep the state as plain data."""
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.original}>"


def inert_class(original: str) -> type[InertObject]:
    """A distinct :class:`InertObject` subclass per foreign class, so records say what they were."""
    return type(original.rsplit(".", 1)[-1], (InertObject,), {"original": original, "__module__": __name__})


@dataclass(frozen=True)
class InertReference:
    """What ``getattr(InertClass, name)`` unpickles to: the dotted name, never the real attribute."""

    name: str


def _inert_getattr(obj: Any, name: Any) -> InertReference:
    """Replacement for ``builtins.getattr``: only names an attribute of an inert class, never reads one."""
    if not (isinstance(obj, type) and issubclass(obj, InertObject)):
        raise _refuse("builtins.getattr", f"getattr on {type(obj).__name__} is not allowed")
    if not (isinstance(name, str) and name.isidentifier() and not name.startswith("_")):
        raise _refuse("builtins.getattr", f"attribute name {name!r} is not allowed")
    return InertReference(f"{obj.original}.{name}")


class NumpyDtype:
    """A validated numpy dtype under construction (REDUCE gives the type code, BUILD the byte order)."""

    dtype: np.dtype | None = None  # stays None if a pickle creates us with NEWOBJ, skipping __init__

    def __init__(self, spec: Any = "", align: Any = False, copy: Any = True) -> None:
        if not (isinstance(spec, str) and _DTYPE_SPEC.fullmatch(spec)):
            raise _refuse("numpy.dtype", f"dtype {spec!r:.80} is not a plain numeric/str dtype")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state: Any) -> None:
        """Accept only the state numpy writes for plain dtypes: (3, byteorder, None, None, None, ...)."""
        if self.dtype is None:
            raise _refuse("numpy.dtype", "dtype state without a type code")
        # Exact type checks before comparing: a tensor's == would return a tensor, not a bool.
        ok = type(state) is tuple and len(state) == 8 and _is_int(state[0], 3)
        ok = ok and type(state[1]) is str and state[1] in _BYTE_ORDER_STRS
        # (3, order, subarray, names, fields, elsize, alignment, flags): no subarray/fields, natural size.
        natural = ok and all(part is None for part in state[2:5]) and (
            _is_int(state[5], -1) or _is_int(state[5], self.dtype.itemsize))
        if not natural:
            raise _refuse("numpy.dtype", f"unexpected dtype state {state!r:.200}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class NdarrayMarker:
    """What the name ``numpy.ndarray`` unpickles to: a tag checked by :func:`_reconstruct_array`."""


class NumpyArray:
    """A numpy array under construction; BUILD hands over (version, shape, dtype, fortran, raw bytes)."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        """Rebuild the array from its raw bytes after checking that the sizes agree exactly."""
        if not (type(state) is tuple and len(state) == 5 and _is_int(state[0], 1)):
            raise _refuse("numpy.ndarray", "unexpected array state")
        _, shape, dtype, fortran, raw = state
        valid_shape = type(shape) is tuple and len(shape) <= _MAX_NDIM
        if not valid_shape or not all(type(n) is int and n >= 0 for n in shape):
            raise _refuse("numpy.ndarray", f"invalid shape {shape!r:.200}")
        plain = isinstance(dtype, NumpyDtype) and dtype.dtype is not None
        if not plain or type(fortran) is not bool or not isinstance(raw, bytes | bytearray):
            raise _refuse("numpy.ndarray", "array of a non-plain dtype or without raw bytes")
        if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
            raise _refuse("numpy.ndarray", "byte count does not match shape and dtype")
        flat = np.frombuffer(bytes(raw), dtype=dtype.dtype)
        self.value = flat.reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct_array(subtype: Any, shape: Any, typecode: Any) -> NumpyArray:
    """Replacement for ``numpy.core.multiarray._reconstruct``: accepts only numpy's own call pattern."""
    if subtype is not NdarrayMarker or not (type(shape) is tuple and shape == (0,)) or typecode != b"b":
        raise _refuse("numpy.core.multiarray._reconstruct", "only plain numpy.ndarray can be rebuilt")
    return NumpyArray()


def _numpy_scalar(dtype: Any, raw: Any) -> Any:
    """Replacement for ``numpy.core.multiarray.scalar``: one value decoded from exactly itemsize bytes."""
    plain = isinstance(dtype, NumpyDtype) and dtype.dtype is not None and isinstance(raw, bytes)
    if not plain or len(raw) != dtype.dtype.itemsize:
        raise _refuse("numpy.core.multiarray.scalar", "scalar of a non-plain dtype or wrong byte count")
    return np.frombuffer(raw, dtype=dtype.dtype)[0]


def _plain_dict(mapping: Any = None) -> dict:
    """Replacement for ``mmengine.config.config.ConfigDict``: its pickled dict, as a plain dict."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise _refuse("mmengine.config.config.ConfigDict", "argument is not a dict")
    return dict(mapping)


HistoryBufferRecord = inert_class("mmengine.logging.history_buffer.HistoryBuffer")

# GLOBAL name in the pickle -> our reconstructor. numpy >= 2 writes `numpy._core`, numpy 1.x `numpy.core`.
_NAMED: dict[str, Callable[..., Any] | type] = {
    "numpy.core.multiarray._reconstruct": _reconstruct_array,
    "numpy._core.multiarray._reconstruct": _reconstruct_array,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.ndarray": NdarrayMarker,
    "numpy.dtype": NumpyDtype,
    "mmengine.logging.history_buffer.HistoryBuffer": HistoryBufferRecord,
    "mmengine.config.config.ConfigDict": _plain_dict,
    "builtins.getattr": _inert_getattr,
}

# torch applies BUILD only to instances of allowlisted types, so our builders are listed under their own
# names too (validating their state is their job, so referencing them directly gains a pickle nothing).
_BUILT_TYPES = (NumpyArray,)

ALLOWED_NAMES: frozenset[str] = frozenset(_NAMED) | {f"{t.__module__}.{t.__qualname__}" for t in _BUILT_TYPES}
SAFE_GLOBALS: list[Any] = [(obj, name) for name, obj in _NAMED.items()] + list(_BUILT_TYPES)


def materialize(obj: Any) -> Any:
    """Replace the in-construction numpy records by real numpy values, recursing through containers.

    Shared sub-objects are converted once (memo by id), so a pickle of nested shared references cannot make
    this walk exponential; cycles and absurd nesting are refused.
    """
    return _materialize(obj, {}, set(), 0)


def _materialize(obj: Any, done: dict[int, Any], active: set[int], depth: int) -> Any:
    if isinstance(obj, NumpyArray | NumpyDtype):
        value = obj.value if isinstance(obj, NumpyArray) else obj.dtype
        if value is None:  # a record created by NEWOBJ and never given its state
            raise CheckpointFormatError("checkpoint holds a numpy value without data; re-save it")
        return value
    if not isinstance(obj, InertObject | dict | list | tuple | set | frozenset):
        return obj
    if id(obj) in done:
        return done[id(obj)]
    if id(obj) in active or depth > _MAX_DEPTH:
        raise CheckpointFormatError("checkpoint meta is cyclic or nested too deeply; re-save it as plain "
                                    "data")
    active.add(id(obj))

    def walk(value: Any) -> Any:
        return _materialize(value, done, active, depth + 1)

    if isinstance(obj, InertObject):
        obj.args, obj.state = walk(obj.args), walk(obj.state)
        result: Any = obj
    elif isinstance(obj, dict):
        items = {k: walk(v) for k, v in obj.items()}
        # OrderedDict/Counter keep their type; Counter must get a mapping (a list of pairs would be counted).
        result = items if type(obj) is dict else type(obj)(items)
    else:
        result = type(obj)(walk(v) for v in obj)
    active.discard(id(obj))
    done[id(obj)] = result
    return result
