"""Everything the serving core needs to know, read once into a frozen object.

Defaults live in `defaults.yaml` beside this file; the `handler:` section of TorchServe's model-config.yaml
overrides them. `settings_from_context` is the single place that reads a TorchServe context (duck-typed,
so this module does not import `ts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A bad value in the handler settings: raised at start-up, so the worker refuses to load."""


@dataclass(frozen=True)
class ServingSettings:
    """Resolved serving settings for one worker."""

    model_name: str
    model_version: str
    model_dir: Path
    device: str
    config_file: str
    weights_dir: str
    score_threshold: float
    max_detections: int
    max_detections_limit: int
    test_scale: tuple[int, int] | None
    max_image_bytes: int
    max_images_per_request: int
    max_image_pixels: int
    max_image_side: int
    min_image_side: int
    fp16: bool
    cudnn_benchmark: bool
    tf32: bool
    torch_threads: int
    keep_freed_memory: bool
    warmup_runs: int
    cpu_msda: str
    decode_threads: int
    log_level: str

    @property
    def config_path(self) -> Path:
        return self.model_dir / self.config_file

    @property
    def weights_path(self) -> Path | None:
        """The safetensors folder, or None when the model runs on random weights (demos, tests)."""
        return self.model_dir / self.weights_dir if self.weights_dir else None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


_TUNABLES = {f.name for f in dataclasses.fields(ServingSettings)} - {
    "model_name", "model_version", "model_dir", "device"}


@dataclass(frozen=True)
class Allowed:
    """What one tunable accepts beyond its type: an inclusive range, where a bound may name another setting,
    or a set of choices, and a note for what neither says. ``_validate`` enforces it; docs/reference.md
    lists it; tests/unit/test_reference.py holds the two together (edge values pass, one step out fails)."""

    low: float | str | None = None
    high: float | str | None = None
    choices: tuple[str, ...] = ()
    note: str = ""


#: Every numeric tunable with a bound, every tunable with choices; the rest accept any value of their type.
ALLOWED: dict[str, Allowed] = {
    "score_threshold": Allowed(0.0, 1.0),
    "max_detections": Allowed(1, "max_detections_limit"),
    "max_detections_limit": Allowed("max_detections"),
    "test_scale": Allowed(note="[long edge, short edge], positive integers, or null"),
    "max_image_bytes": Allowed(1),
    "max_images_per_request": Allowed(1),
    "max_image_pixels": Allowed(1),
    "max_image_side": Allowed("min_image_side"),
    "min_image_side": Allowed(1, "max_image_side"),
    "fp16": Allowed(note="true needs a CUDA device; a CPU worker always runs with false"),
    "torch_threads": Allowed(0),
    "cpu_msda": Allowed(choices=("auto", "fallback")),
    "decode_threads": Allowed(0),
    "warmup_runs": Allowed(0),
    "log_level": Allowed(choices=LOG_LEVELS),
}


def load_defaults() -> dict[str, Any]:
    with DEFAULTS_FILE.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


@cache
def default(name: str) -> Any:
    """One packaged default, for code that runs without full settings (limits built in tests, tools)."""
    return load_defaults()[name]


def build_settings(overrides: Mapping[str, Any] | None, *, model_dir: str | Path, device: str,
                   model_name: str = "co_detr", model_version: str = "1.0") -> ServingSettings:
    """Merge `overrides` (the yaml `handler:` section) over the packaged defaults and validate."""
    values = load_defaults()
    unknown = sorted(set(overrides or {}) - _TUNABLES)
    if unknown:
        raise SettingsError(f"unknown handler setting(s) {unknown} in model-config.yaml; "
                            f"known settings: {sorted(_TUNABLES)}")
    for name, value in (overrides or {}).items():
        _check_type(name, value, values[name])
    values.update(overrides or {})
    values["test_scale"] = _parse_scale(values.get("test_scale"))
    values["weights_dir"] = values.get("weights_dir") or ""
    settings = ServingSettings(model_name=model_name, model_version=str(model_version),
                               model_dir=Path(model_dir), device=device, **values)
    _validate(settings)
    return settings


#: What YAML has to say for a setting whose default is of this type.
_KINDS = {bool: ("true or false", (bool,)), int: ("a whole number", (int,)),
          float: ("a number", (int, float)), str: ("a string", (str,))}


def _check_type(name: str, value: Any, default_value: Any) -> None:
    """Refuse an override of the wrong YAML type: quoted "false" would otherwise read as true, and "0.5"
    would fail later with a TypeError instead of naming the setting."""
    kind = _KINDS.get(type(default_value))
    if kind is None:  # test_scale (null or a list): _parse_scale checks it
        return
    words, types = kind
    if type(value) in types:  # exact types: YAML's true is a bool, never an int
        return
    hint = " (remove the quotes)" if isinstance(value, str) else ""
    raise SettingsError(f"{name} must be {words}, like its default {default_value!r}; got {value!r} "
                        f"({type(value).__name__}){hint} (handler section of model-config.yaml)")


def _parse_scale(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise SettingsError(f"test_scale must be [long_edge, short_edge] in pixels (e.g. [1333, 800]) "
                        f"or null, got {value!r}")


def _validate(s: ServingSettings) -> None:
    checks = [
        (0.0 <= s.score_threshold <= 1.0, "score_threshold must be within [0, 1]"),
        (1 <= s.max_detections <= s.max_detections_limit,
         "need 1 <= max_detections <= max_detections_limit"),
        (s.max_image_bytes > 0 and s.max_image_pixels > 0, "image limits must be positive"),
        (s.max_images_per_request >= 1, "max_images_per_request must be >= 1"),
        (0 < s.min_image_side <= s.max_image_side, "need 0 < min_image_side <= max_image_side"),
        (s.warmup_runs >= 0, "warmup_runs must be >= 0"),
        (s.torch_threads >= 0, "torch_threads must be >= 0 (0 keeps torch's default)"),
        (s.cpu_msda in ("auto", "fallback"), "cpu_msda must be auto or fallback"),
        (s.decode_threads >= 0, "decode_threads must be >= 0 (0 = min(4, CPU count), 1 = serial)"),
        (not s.fp16 or s.is_cuda, "fp16 needs a CUDA device; set fp16: false for CPU workers"),
        (s.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(f"{message} (handler section of model-config.yaml)")


def settings_from_context(context: Any, cuda_available: bool) -> ServingSettings:
    """Read a TorchServe context: model dir, GPU id, manifest and the yaml `handler:` section."""
    properties = context.system_properties
    gpu_id = properties.get("gpu_id")
    device = f"cuda:{gpu_id}" if cuda_available and gpu_id is not None else "cpu"
    model = (getattr(context, "manifest", None) or {}).get("model", {})
    yaml_config = getattr(context, "model_yaml_config", None) or {}
    handler_section = yaml_config.get("handler") or {}
    if not cuda_available:
        # The same archive must serve on a CPU node: CUDA-only switches are ignored there.
        handler_section = {**handler_section, "fp16": False}
    # The registered name (what clients call) can differ from the archive's own (rollouts register
    # co_detr_v2.mar as co_detr), so the context's name wins over the manifest's.
    name = getattr(context, "model_name", None) or model.get("modelName", "co_detr")
    return build_settings(handler_section, model_dir=properties["model_dir"], device=device,
                          model_name=name,
                          model_version=model.get("modelVersion", "1.0"))
