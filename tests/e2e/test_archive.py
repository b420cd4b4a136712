"""archive.sh: rebuild only on change, versions from content, clear refusal of mismatched checkpoints."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from codetr_serve.convert.model_dir import random_checkpoint
from codetr_serve.runtime.model_loader import load_config
from tests.conftest import TINY_CONFIG
from tests.e2e.conftest import run_archive

pytestmark = pytest.mark.e2e


def save_mmengine_checkpoint(path, state_dict) -> None:
    meta = {"dataset_meta": {"classes": tuple(f"thing{i}" for i in range(20))}, "epoch": 1}
    torch.save({"meta": meta, "state_dict": state_dict}, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    cfg = load_config(TINY_CONFIG)
    paths = {}
    for seed in (1, 2):
        paths[seed] = root / f"seed{seed}.pth"
        save_mmengine_checkpoint(paths[seed], random_checkpoint(cfg, seed).state_dict)
    broken = random_checkpoint(cfg, 3).state_dict
    dropped = [k for k in broken if k.startswith("query_head.")][:3]
    for key in dropped:
        del broken[key]
    paths["missing"] = root / "missing.pth"
    save_mmengine_checkpoint(paths["missing"], broken)
    return paths, dropped


def version_of(output: str) -> str:
    return output.rsplit("(version ", 1)[1].split(")")[0]


def test_unchanged_inputs_rebuild_nothing_and_new_weights_give_new_version(tmp_path, checkpoints):
    paths, _ = checkpoints
    store = tmp_path / "store"
    args = ["--config", str(TINY_CONFIG), "--out", str(store)]
    first = run_archive(*args, "--checkpoint", str(paths[1]))
    assert first.returncode == 0, first.stderr
    mar = store / "co_detr.mar"
    built_at = mar.stat().st_mtime_ns

    again = run_archive(*args, "--checkpoint", str(paths[1]))
    assert again.returncode == 0, again.stderr
    assert "nothing rebuilt" in again.stdout
    assert mar.stat().st_mtime_ns == built_at
    assert version_of(again.stdout) == version_of(first.stdout)

    changed = run_archive(*args, "--checkpoint", str(paths[2]))
    assert changed.returncode == 0, changed.stderr
    assert "built" in changed.stdout
    assert version_of(changed.stdout) != version_of(first.stdout)


def test_mismatched_checkpoint_is_refused_and_writes_no_archive(tmp_path, checkpoints):
    paths, dropped = checkpoints
    store = tmp_path / "store"
    result = run_archive("--config", str(TINY_CONFIG), "--checkpoint", str(paths["missing"]),
                         "--out", str(store))
    assert result.returncode != 0
    assert dropped[0] in result.stderr
    assert not (store / "co_detr.mar").exists()


def test_missing_config_is_a_clear_error(tmp_path):
    result = run_archive("--config", str(tmp_path / "nope.py"), "--out", str(tmp_path))
    assert result.returncode != 0
    assert "nope.py" in result.stderr


def test_zip_archive_stores_the_weights_uncompressed(tmp_path):
    """TorchServe unzips a .mar on every start: inflating the weights was most of a zip cold start."""
    result = run_archive("--config", str(TINY_CONFIG), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "co_detr.mar") as archive:
        members = {info.filename: info.compress_type for info in archive.infolist()}
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert members["weights/model.safetensors"] == zipfile.ZIP_STORED
    assert members["co_detr_handler.py"] == zipfile.ZIP_DEFLATED
    assert manifest["model"]["modelName"] == "co_detr"
    assert manifest["model"]["handler"] == "co_detr_handler.py"


def test_no_archive_rebuild_replaces_the_folder(tmp_path, checkpoints):
    paths, _ = checkpoints
    args = ["--config", str(TINY_CONFIG), "--out", str(tmp_path), "--format", "no-archive"]
    for seed in (1, 2):
        result = run_archive(*args, "--checkpoint", str(paths[seed]))
        assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "co_detr" / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["modelVersion"] == version_of(result.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".co_detr.no-archive.inputs-sha256", "co_detr"]
