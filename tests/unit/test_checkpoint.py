"""read_checkpoint: real mmengine checkpoints load, malicious pickles are refused without running."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import save_checkpoint
from torch import nn

from codetr_serve.convert.checkpoint import read_checkpoint
from codetr_serve.convert.checkpoint_allowlist import InertObject, InertReference
from codetr_serve.runtime.weight_errors import (
    CheckpointCorrupt,
    CheckpointFormatError,
    CheckpointNotFound,
    UnsafeCheckpoint,
    WeightsError,
)

CLASSES = ("person", "car", "traffic light")

# A real mmengine training run (Runner + CheckpointHook + LoggerHook + schedulers), in a subprocess so its
# global side effects (registries, logging, cv2 threads) stay out of this test process.
RUNNER_SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from torch.utils.data import Dataset
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck = nn.Linear(4, 4), nn.Linear(4, 4)
            self.query_head, self.roi_head = nn.Linear(4, 3), nn.Linear(4, 3)
        def forward(self, inputs, labels=None, mode='tensor'):
            out = self.query_head(self.neck(self.backbone(inputs))) + self.roi_head(inputs)
            return {'loss': ((out - labels) ** 2).mean()} if mode == 'loss' else out

    class ToyData(Dataset):
        metainfo = dict(classes=('person', 'car', 'traffic light'),
                        palette=[(220, 20, 60), (119, 11, 32), (0, 0, 142)])
        def __len__(self): return 8
        def __getitem__(self, i): return dict(inputs=torch.randn(4), labels=torch.randn(3))

    Runner(model=Toy(), work_dir=sys.argv[1], log_level='WARNING', randomness=dict(seed=42),
           train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                                 batch_size=2, num_workers=0, collate_fn=dict(type='default_collate')),
           train_cfg=dict(by_epoch=True, max_epochs=2),
           optim_wrapper=dict(optimizer=dict(type='AdamW', lr=2e-4), clip_grad=dict(max_norm=0.1)),
           param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
                            dict(type='MultiStepLR', by_epoch=True, milestones=[1], begin=0, end=2)],
           default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                              checkpoint=dict(type='CheckpointHook', interval=1))).train()
""")


@pytest.fixture(scope="module")
def runner_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """epoch_2.pth written by mmengine 0.10.7's own Runner/CheckpointHook."""
    work_dir = tmp_path_factory.mktemp("runner")
    (script := work_dir / "train.py").write_text(RUNNER_SCRIPT)
    subprocess.run([sys.executable, str(script), str(work_dir)], check=True, capture_output=True, timeout=300)
    return work_dir / "epoch_2.pth"


def _toy_state_dict() -> OrderedDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"backbone": nn.Linear(4, 4), "query_head": nn.Linear(4, 3)}).state_dict()


class Reduces:
    """Pickles as the (callable, args[, state]) it is given: forged pickles without writing opcodes."""

    def __init__(self, *reduce_value: object) -> None:
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


def payload(marker: Path) -> Reduces:
    """The classic malicious checkpoint object: unpickling it runs `os.system('touch <marker>')`."""
    return Reduces(os.system, (f"touch {marker}",))


def test_runner_checkpoint_needs_the_allowlist_and_loads(runner_checkpoint: Path) -> None:
    with pytest.raises(pickle.UnpicklingError):  # what mmengine's load_checkpoint hits on torch >= 2.6
        torch.load(runner_checkpoint, weights_only=True)
    offending = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(runner_checkpoint)))
    assert {"mmengine.logging.history_buffer.HistoryBuffer", "numpy.core.multiarray._reconstruct",
            "builtins.getattr"} <= offending
    allowlisted_before = set(torch.serialization.get_safe_globals())

    ckpt = read_checkpoint(runner_checkpoint)

    assert ckpt.classes == CLASSES
    assert ckpt.meta["dataset_meta"]["palette"] == [(220, 20, 60), (119, 11, 32), (0, 0, 142)]
    assert (ckpt.meta["epoch"], ckpt.meta["seed"]) == (2, 42)
    assert ckpt.meta["mmengine_version"].startswith("0.10.7")
    assert "optimizer" not in ckpt.meta and "message_hub" not in ckpt.meta
    assert set(ckpt.state_dict) == {f"{m}.{p}" for m in ("backbone", "neck", "query_head", "roi_head")
                                    for p in ("weight", "bias")}
    assert ckpt.sha256 == hashlib.sha256(runner_checkpoint.read_bytes()).hexdigest()
    assert ckpt.source == runner_checkpoint
    assert set(torch.serialization.get_safe_globals()) == allowlisted_before  # our allowlist did not leak


def _realistic_checkpoint(path: Path) -> dict:
    """An mmengine-style checkpoint whose meta holds numpy, HistoryBuffer and ConfigDict objects."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[11])
    hub = MessageHub.get_instance("codetr_serve_test")
    hub.update_scalar("train/loss", np.float64(0.25))
    hub.update_info("iter", 1000, resumed=True)
    meta = {
        "dataset_meta": ConfigDict(classes=CLASSES, palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9)]),
        "mmengine_version": "0.10.7", "mmdet_version": "3.3.0", "seed": np.int64(42),
        "env_info": "sys.platform: linux\nPython: 3.11", "config": "model = dict(type='CoDETR')",
        "epoch": 12, "iter": np.int64(1000), "lr": np.float32(2e-4), "flag": np.bool_(True),
        "anchors": np.arange(6, dtype=np.float32).reshape(2, 3), "fortran": np.asfortranarray(np.eye(3)),
        "big_endian": np.array([1, 2], dtype=">i4"), "names": np.array(["a", "bc"]),
        "history": HistoryBuffer([1.0, 2.0], [1, 1]),
    }
    checkpoint = {"meta": meta, "state_dict": model.state_dict(), "message_hub": hub.state_dict(),
                  "optimizer": optimizer.state_dict(), "param_schedulers": [scheduler.state_dict()]}
    save_checkpoint(checkpoint, str(path))
    return meta


def test_numpy_and_mmengine_objects_in_meta_become_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "realistic.pth"
    saved = _realistic_checkpoint(path)

    ckpt = read_checkpoint(path)
    meta = ckpt.meta
    assert ckpt.classes == CLASSES and type(meta["dataset_meta"]) is dict  # ConfigDict -> plain dict
    for key in ("seed", "iter", "lr", "flag"):
        assert type(meta[key]) is type(saved[key]) and meta[key] == saved[key]
    for key in ("anchors", "fortran", "big_endian", "names"):
        assert meta[key].dtype == saved[key].dtype and np.array_equal(meta[key], saved[key])
    history = meta["history"]
    assert isinstance(history, InertObject) and history.original.endswith("HistoryBuffer")
    assert np.array_equal(history.state["_log_history"], [1.0, 2.0])
    assert history.state["statistics_methods"]["mean"] == InertReference(
        "mmengine.logging.history_buffer.HistoryBuffer.mean")
    assert set(ckpt.state_dict) == {"weight", "bias"}


def _save_with_meta(path: Path, meta_value: object, **save_kwargs: object) -> None:
    torch.save({"state_dict": _toy_state_dict(), "meta": {"x": meta_value}}, path, **save_kwargs)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_payload_is_refused_and_never_runs(tmp_path: Path, zip_format: bool) -> None:
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(payload(control)))  # proves the payload is live when really unpickled
    assert control.exists()
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    _save_with_meta(path, payload(marker), _use_new_zipfile_serialization=zip_format)

    with pytest.raises(UnsafeCheckpoint) as info:
        read_checkpoint(path)

    assert not marker.exists()
    assert info.value.offending == ("posix.system",)
    assert "posix.system" in str(info.value) and "codetr_serve.convert.export" in str(info.value)
    assert isinstance(info.value, WeightsError) and info.value.code == "checkpoint_unsafe"


def test_history_buffer_name_runs_no_mmengine_code(tmp_path: Path) -> None:
    fake = Reduces(HistoryBuffer, (), {"statistics_methods": {"evil_stat": HistoryBuffer.max}, "n": 9})
    data = pickle.dumps(fake, protocol=2)
    try:  # control: the real class registers the statistic on its class-level dict when unpickled
        pickle.loads(data)
        assert "evil_stat" in HistoryBuffer._statistics_methods
    finally:
        HistoryBuffer._statistics_methods.pop("evil_stat", None)
    path = tmp_path / "hb.pth"
    _save_with_meta(path, fake)

    ckpt = read_checkpoint(path)

    assert "evil_stat" not in HistoryBuffer._statistics_methods
    assert isinstance(ckpt.meta["x"], InertObject) and ckpt.meta["x"].state["n"] == 9


_reconstruct = np.core.multiarray._reconstruct


@pytest.mark.parametrize("value, name", [
    (np.array([1, "a"], dtype=object), "numpy.dtype"),  # object arrays could carry any Python object
    (eval, "builtins.eval"),
    (np.random.default_rng(0), "numpy.random._pickle.__generator_ctor"),
    (Reduces(getattr, (OrderedDict, "fromkeys")), "builtins.getattr"),  # getattr only names inert classes
    (Reduces(_reconstruct, (np.ndarray, (10**9,), b"b")), "numpy.core.multiarray._reconstruct"),
    (Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (10**6, 10**6), np.dtype("f8"), False, b"\0" * 8)),
     "numpy.ndarray"),  # a shape the bytes do not back
    (Reduces(np.core.multiarray.scalar, (np.dtype([("a", "i4")]), b"\0" * 4)), "numpy.dtype"),  # structured
], ids=["object-array", "eval", "numpy-generator", "getattr", "huge-alloc", "forged-shape", "structured"])
def test_objects_outside_the_allowlist_are_named(tmp_path: Path, value: object, name: str) -> None:
    path = tmp_path / "other.pth"
    _save_with_meta(path, value)
    with pytest.raises(UnsafeCheckpoint) as info:
        read_checkpoint(path)
    assert name in info.value.offending


def test_numpy2_names_shared_and_cyclic_meta(tmp_path: Path) -> None:
    path = tmp_path / "numpy2.pth"
    _save_with_meta(path, {"a": np.arange(3.0), "s": np.int32(4)}, _use_new_zipfile_serialization=False)
    # numpy >= 2 pickles name `numpy._core`; a GLOBAL is newline-terminated text, so this stays valid.
    path.write_bytes(path.read_bytes().replace(b"numpy.core.multiarray", b"numpy._core.multiarray"))
    assert b"numpy._core.multiarray" in path.read_bytes() and b"numpy.core." not in path.read_bytes()
    value = read_checkpoint(path).meta["x"]
    assert np.array_equal(value["a"], [0.0, 1.0, 2.0]) and value["s"] == np.int32(4)
    shared: list = [1]
    for _ in range(60):  # 2**60 paths through 61 objects: the walk must follow each object once
        shared = [shared, shared]
    _save_with_meta(tmp_path / "shared.pth", shared)
    assert read_checkpoint(tmp_path / "shared.pth").meta["x"][0][0][0] is not None
    cyclic: list = []
    cyclic.append(cyclic)
    _save_with_meta(tmp_path / "cyclic.pth", cyclic)
    with pytest.raises(CheckpointFormatError, match="cyclic"):
        read_checkpoint(tmp_path / "cyclic.pth")


def test_bare_state_dict_and_module_prefix(tmp_path: Path) -> None:
    state = _toy_state_dict()
    torch.save(state, tmp_path / "bare.pth")
    torch.save(nn.DataParallel(nn.ModuleDict({"bb": nn.Linear(4, 4)})).state_dict(), tmp_path / "dp.pth")
    bare, wrapped = read_checkpoint(tmp_path / "bare.pth"), read_checkpoint(tmp_path / "dp.pth")
    assert bare.meta == {} and bare.classes is None
    assert all(torch.equal(bare.state_dict[k], v) for k, v in state.items())
    assert set(wrapped.state_dict) == {"bb.weight", "bb.bias"}


def test_mmdet2_classes_and_layout_errors(tmp_path: Path) -> None:
    torch.save({"state_dict": _toy_state_dict(), "meta": {"CLASSES": ["a", "b"]}}, tmp_path / "v2.pth")
    assert read_checkpoint(tmp_path / "v2.pth").classes == ("a", "b")
    bad = {
        "collide.pth": {"state_dict": {"w": torch.zeros(1), "module.w": torch.zeros(1)}},
        "non_tensor.pth": {"state_dict": {"w": torch.zeros(1), "step": 3}},
        "no_weights.pth": {"model_name": "x", "epoch": 3},
        "list.pth": [torch.zeros(1)],
        "bad_classes.pth": {"state_dict": {"w": torch.zeros(1)}, "meta": {"dataset_meta": {"classes": "ab"}}},
    }
    for name, obj in bad.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointFormatError):
            read_checkpoint(tmp_path / name)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_files_are_reported_as_corrupt(tmp_path: Path, zip_format: bool) -> None:
    full = tmp_path / "full.pth"
    torch.save({"state_dict": _toy_state_dict()}, full, _use_new_zipfile_serialization=zip_format)
    data = full.read_bytes()
    for size in (len(data) // 2, len(data) - 10, 3):
        cut = tmp_path / f"cut_{size}.pth"
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointCorrupt, match="truncated, damaged or not a torch checkpoint"):
            read_checkpoint(cut)


def test_not_a_file_and_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointNotFound, match="not a regular file"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("<html>404 Not Found</html>")
    torch.save({"state_dict": _toy_state_dict()}, tmp_path / "proto4.pth", pickle_protocol=4)
    for name in ("empty.pth", "text.pth", "proto4.pth"):
        with pytest.raises(CheckpointCorrupt, match="damaged|pickle_protocol > 2"):
            read_checkpoint(tmp_path / name)
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(CheckpointCorrupt, match="torchscript"):
        read_checkpoint(scripted)
