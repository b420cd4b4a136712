"""Serving weights: bit-exact safetensors round trip without pickle, and checked state-dict application."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from codetr_serve.convert.checkpoint import Checkpoint, read_checkpoint
from codetr_serve.convert.export import export_safetensors, main
from codetr_serve.runtime.weight_errors import ServingWeightsError, StateDictMismatch
from codetr_serve.runtime.weights import (
    FORMAT,
    META_FILE,
    WEIGHTS_FILE,
    apply_state_dict,
    load_serving_weights,
)


class FakeCoDino(nn.Module):
    """The module layout of Co-DINO in miniature: inference path + training-only auxiliary heads."""

    def __init__(self, num_classes: int = 3, query_layers: int = 1) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.neck = nn.Linear(4, 8)
        self.query_head = nn.ModuleDict({
            "cls_branches": nn.ModuleList(nn.Linear(8, num_classes) for _ in range(query_layers)),
            "query_embedding": nn.Embedding(5, 8),
        })
        self.rpn_head = nn.Conv2d(8, 2, 1)
        self.roi_head = nn.ModuleList([nn.Linear(8, num_classes + 1)])


def _bits(t: torch.Tensor) -> bytes:
    """The exact bytes of a tensor (NaN payloads and -0.0 included), independent of its strides."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in FakeCoDino().state_dict().items()}


def test_round_trip_is_bit_exact_for_every_dtype(tmp_path: Path) -> None:
    special = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-45, 3.14159])
    shared = torch.arange(12, dtype=torch.float32)
    state = {
        "f32": special, "f16": special.half(), "bf16": special.bfloat16(), "f64": special.double(),
        "i64": torch.tensor([2**62, -1]), "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([1, 0]).bool(),
        "scalar": torch.tensor(7.5), "empty": torch.zeros(0, 3), "transposed": torch.randn(3, 5).t(),
        "view_a": shared[:6], "view_b": shared[6:], "alias": shared,  # one storage, three names
    }
    ckpt = Checkpoint(state_dict=state, meta={}, classes=("a",), sha256="0" * 64)

    paths = export_safetensors(ckpt, tmp_path / "w")
    loaded, meta = load_serving_weights(tmp_path / "w")

    assert set(loaded) == set(state)
    for name, original in state.items():
        assert loaded[name].dtype == original.dtype and loaded[name].shape == original.shape, name
        assert _bits(loaded[name]) == _bits(original), name
    assert meta["num_tensors"] == len(state) and meta["classes"] == ["a"]
    assert paths.weights.name == WEIGHTS_FILE and paths.meta.name == META_FILE
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted([WEIGHTS_FILE, META_FILE])  # no .tmp


def test_export_from_a_checkpoint_file_records_provenance(tmp_path: Path) -> None:
    source = tmp_path / "co_dino_test.pth"
    state = _random_state_dict()
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": ("a", "b", "c")}}}, source)

    export_safetensors(read_checkpoint(source), tmp_path / "w")

    meta = json.loads((tmp_path / "w" / META_FILE).read_text())
    assert meta["format"] == FORMAT and meta["classes"] == ["a", "b", "c"]
    assert meta["source"] == {"file": "co_dino_test.pth",
                              "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert meta["num_tensors"] == len(state)
    assert meta["dtypes"] == {"float32": len(state) - 1, "int64": 1}  # BatchNorm's num_batches_tracked
    written = (tmp_path / "w" / WEIGHTS_FILE).read_bytes()
    assert meta["safetensors_sha256"] == hashlib.sha256(written).hexdigest()
    assert meta["created_by"].startswith("codetr-serve ")


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _random_state_dict()
    export_safetensors(Checkpoint(state_dict=state, meta={}, classes=None, sha256="0" * 64), tmp_path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading serving weights")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    loaded, meta = load_serving_weights(tmp_path)

    assert meta["classes"] is None
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def _exported(tmp_path: Path) -> Path:
    ckpt = Checkpoint(state_dict=_random_state_dict(), meta={}, classes=None, sha256="0" * 64)
    export_safetensors(ckpt, tmp_path)
    return tmp_path


def test_damaged_serving_dirs_are_refused(tmp_path: Path) -> None:
    weights_dir = _exported(tmp_path / "ok")
    data = (weights_dir / WEIGHTS_FILE).read_bytes()
    (weights_dir / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ServingWeightsError, match="truncated or replaced"):
        load_serving_weights(weights_dir)
    with pytest.raises(ServingWeightsError, match="unreadable"):
        load_serving_weights(weights_dir, verify=False)  # safetensors itself rejects the truncated file

    with pytest.raises(ServingWeightsError, match="lacks model.safetensors, model_meta.json"):
        load_serving_weights(tmp_path / "nowhere")
    other = _exported(tmp_path / "fmt")
    meta = json.loads((other / META_FILE).read_text())
    (other / META_FILE).write_text(json.dumps({**meta, "num_tensors": meta["num_tensors"] + 1}))
    with pytest.raises(ServingWeightsError, match="says"):
        load_serving_weights(other)
    (other / META_FILE).write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ServingWeightsError, match="expected 'codetr-serve-weights/1'"):
        load_serving_weights(other)
    (other / META_FILE).write_text("{not json")
    with pytest.raises(ServingWeightsError, match="unreadable") as info:
        load_serving_weights(other)
    assert info.value.code == "serving_weights_invalid" and "Re-export" in info.value.message


def test_apply_full_state_dict_loads_everything() -> None:
    state, model = _random_state_dict(seed=1), FakeCoDino()

    report = apply_state_dict(model, state)

    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert set(report.loaded) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_training_only_keys_missing_and_extra_keys_are_only_reported() -> None:
    training_only = ("rpn_head.", "roi_head.")
    state = {k: v for k, v in _random_state_dict(seed=1).items() if not k.startswith(training_only)}
    state["query_head.dn_query_generator.label_embedding.weight"] = torch.zeros(4, 8)
    model = FakeCoDino()

    report = apply_state_dict(model, state)

    assert set(report.missing) == {"rpn_head.weight", "rpn_head.bias", "roi_head.0.weight", "roi_head.0.bias"}
    assert report.missing_required == ()
    assert report.unexpected == ("query_head.dn_query_generator.label_embedding.weight",)
    assert torch.equal(model.neck.weight, state["neck.weight"])
    assert "missing 4 (0 on the inference path); unexpected 1" in str(report)


def test_missing_inference_key_raises_and_leaves_the_model_untouched() -> None:
    state = _random_state_dict(seed=1)
    del state["query_head.query_embedding.weight"]
    model = FakeCoDino()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(StateDictMismatch) as info:
        apply_state_dict(model, state)

    assert "'query_head.query_embedding.weight'" in info.value.message
    assert "1 keys of the inference path" in info.value.message and info.value.code == "state_dict_mismatch"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_any_shape_mismatch_raises_even_outside_the_inference_path() -> None:
    state = FakeCoDino(num_classes=80).state_dict()  # classifier shapes differ in query_head AND roi_head

    with pytest.raises(StateDictMismatch) as info:
        apply_state_dict(FakeCoDino(num_classes=3), state)

    message = info.value.message
    assert "4 shapes differ" in message
    assert "roi_head.0.weight: weights [81, 8] vs model [4, 8]" in message
    assert info.value.details["mismatched"] == ["query_head.cls_branches.0.weight",
                                               "query_head.cls_branches.0.bias", "roi_head.0.weight",
                                               "roi_head.0.bias"]


def test_long_key_lists_are_truncated_with_a_count() -> None:
    model = FakeCoDino(query_layers=15)  # 30 classifier keys
    state = {k: v for k, v in model.state_dict().items() if "cls_branches" not in k}

    with pytest.raises(StateDictMismatch) as info:
        apply_state_dict(model, state)

    assert "30 keys of the inference path" in info.value.message
    assert "(and 10 more)" in info.value.message
    assert len(info.value.details["missing"]) == 30


def test_cli_exports_and_explains_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, evil = tmp_path / "good.pth", tmp_path / "evil.pth"
    torch.save({"state_dict": _random_state_dict()}, good)
    torch.save({"state_dict": _random_state_dict(), "meta": {"x": print}}, evil)

    assert main(["export", str(good), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / WEIGHTS_FILE).is_file()
    assert main(["export", str(evil), str(tmp_path / "out2")]) == 2
    assert "checkpoint_unsafe" in capsys.readouterr().out and not (tmp_path / "out2").exists()
