"""Settings: packaged defaults, yaml overrides, validation with messages that say what to fix."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from codetr_serve.runtime.settings import SettingsError, build_settings, load_defaults, settings_from_context


def test_defaults_come_from_the_packaged_yaml():
    settings = build_settings(None, model_dir="/m", device="cpu")
    defaults = load_defaults()
    assert settings.score_threshold == defaults["score_threshold"]
    assert settings.max_detections == defaults["max_detections"]
    assert settings.config_path.as_posix() == "/m/model_config.py"
    assert settings.weights_path.as_posix() == "/m/weights"


def test_overrides_and_random_weights():
    settings = build_settings({"score_threshold": 0.5, "test_scale": [1333, 800], "weights_dir": ""},
                              model_dir="/m", device="cpu")
    assert settings.score_threshold == 0.5
    assert settings.test_scale == (1333, 800)
    assert settings.weights_path is None


@pytest.mark.parametrize("overrides, words", [
    ({"score_treshold": 0.5}, "unknown handler setting"),
    ({"score_threshold": 1.5}, "score_threshold"),
    ({"max_detections": 0}, "max_detections"),
    ({"test_scale": [1333]}, "test_scale"),
    ({"min_image_side": 0}, "min_image_side"),
    ({"fp16": True}, "fp16 needs a CUDA device"),
    ({"torch_threads": -1}, "torch_threads must be >= 0"),
])
def test_bad_settings_are_refused_with_a_fix(overrides, words):
    with pytest.raises(SettingsError, match=words):
        build_settings(overrides, model_dir="/m", device="cpu")


@pytest.mark.parametrize("name, value", [
    ("fp16", "false"),                 # quoted in YAML: a non-empty string, which Python reads as true
    ("keep_freed_memory", "no"),
    ("score_threshold", "0.5"),
    ("score_threshold", True),         # YAML's true is not a number
    ("max_detections", 100.0),
    ("max_detections", "100"),
    ("warmup_runs", 1.5),
    ("torch_threads", False),
    ("cpu_msda", 1),
    ("log_level", None),
    ("config_file", ["model_config.py"]),
])
def test_a_value_of_the_wrong_yaml_type_is_refused_by_name(name, value):
    with pytest.raises(SettingsError, match=rf"^{name} must be .* got {re.escape(repr(value))}"):
        build_settings({name: value}, model_dir="/m", device="cpu")


def test_a_quoted_value_is_told_to_lose_its_quotes():
    with pytest.raises(SettingsError, match=r"remove the quotes"):
        build_settings({"fp16": "false"}, model_dir="/m", device="cuda:0")


def test_every_typed_default_accepts_its_own_type():
    defaults = load_defaults()
    typed = {name: value for name, value in defaults.items() if isinstance(value, bool | int | float | str)}
    assert build_settings(typed, model_dir="/m", device="cpu").score_threshold == defaults["score_threshold"]
    assert build_settings({"score_threshold": 1}, model_dir="/m", device="cpu").score_threshold == 1


def test_context_is_read_in_one_place():
    context = SimpleNamespace(
        model_name="co_detr",
        system_properties={"model_dir": "/unpacked", "gpu_id": 1},
        manifest={"model": {"modelName": "co_detr_v2", "modelVersion": "2.0"}},
        model_yaml_config={"minWorkers": 1, "handler": {"fp16": True, "max_detections": 7}})
    on_gpu = settings_from_context(context, cuda_available=True)
    assert (on_gpu.device, on_gpu.fp16, on_gpu.max_detections) == ("cuda:1", True, 7)
    assert (on_gpu.model_name, on_gpu.model_version) == ("co_detr", "2.0")  # registered name wins
    on_cpu = settings_from_context(context, cuda_available=False)
    assert (on_cpu.device, on_cpu.fp16) == ("cpu", False)  # the same archive serves on a CPU node
