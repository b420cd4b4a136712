"""archive.sh refuses unsafe inputs with a clear error and writes nothing, anywhere."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

from codetr_serve.tools import archive
from tests.conftest import TINY_CONFIG


def snapshot(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def refused(tmp_path: Path, capsys, *argv: str) -> str:
    """Run archive.sh's main; it must fail with exit code 2 and leave tmp_path as it was."""
    before = snapshot(tmp_path)
    assert archive.main(list(argv)) == 2
    assert snapshot(tmp_path) == before, "nothing may be written when an input is refused"
    message = capsys.readouterr().err
    assert message.startswith("archive.sh: error: ") and "Traceback" not in message
    return message


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "a..b", "x y", ""])
def test_a_model_name_that_is_not_a_plain_name_is_refused(tmp_path, capsys, name):
    out = tmp_path / "store"
    message = refused(tmp_path, capsys, "--config", str(TINY_CONFIG), "--out", str(out), "--name", name)
    assert "is not a model name" in message


def test_an_output_folder_with_dotdot_is_refused(tmp_path, capsys):
    out = tmp_path / "store" / ".." / ".." / "elsewhere"
    message = refused(tmp_path, capsys, "--config", str(TINY_CONFIG), "--out", str(out))
    assert "contains '..'" in message
    assert not (tmp_path.parent / "elsewhere").exists()


def test_a_version_with_a_path_in_it_is_refused(tmp_path, capsys):
    message = refused(tmp_path, capsys, "--config", str(TINY_CONFIG), "--out", str(tmp_path / "o"),
                      "--version", "1.0/../../x")
    assert "is not a version" in message


def test_custom_imports_outside_the_worker_package_are_refused_without_importing_them(tmp_path, capsys,
                                                                                        monkeypatch):
    # A module that leaves a mark when imported: the refusal must come before any import.
    (tmp_path / "mark_on_import.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "evil_config.py"
    config.write_text(f"_base_ = [{str(TINY_CONFIG)!r}]\n"
                      "custom_imports = dict(imports=['codetr_serve.models', 'mark_on_import'])\n")
    message = refused(tmp_path, capsys, "--config", str(config), "--out", str(tmp_path / "out"))
    assert "custom_imports names ['mark_on_import']" in message and "codetr_serve.models" in message
    assert not (tmp_path / "imported").exists()
    assert "mark_on_import" not in sys.modules


@pytest.mark.parametrize("imports", ["'os'", "['codetr_serve.tools.archive']",
                                     "['codetr_serve_evil.models']"])
def test_other_outside_imports_are_refused_too(tmp_path, capsys, imports):
    config = tmp_path / "config.py"
    config.write_text(f"_base_ = [{str(TINY_CONFIG)!r}]\ncustom_imports = dict(imports={imports})\n")
    assert "outside the package the worker ships" in refused(tmp_path, capsys, "--config", str(config),
                                                             "--out", str(tmp_path / "o"))


def test_the_shipped_configs_pass_the_import_check():
    for config in (archive.REPO / "config").glob("*.py"):
        archive._vet_custom_imports(config)


def test_a_checkpoint_symlink_is_refused(tmp_path, capsys):
    real = tmp_path / "real.pth"
    real.write_bytes(b"not read")
    link = tmp_path / "model.pth"
    link.symlink_to(real)
    message = refused(tmp_path, capsys, "--config", str(TINY_CONFIG), "--checkpoint", str(link),
                      "--out", str(tmp_path / "out"))
    assert "is a symbolic link" in message and str(real) in message


def test_a_checkpoint_that_is_not_a_regular_file_is_refused(tmp_path, capsys):
    message = refused(tmp_path, capsys, "--config", str(TINY_CONFIG), "--checkpoint", os.devnull,
                      "--out", str(tmp_path / "out"))
    assert "is not a regular file" in message


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path, capsys):
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive_file:
        with archive_file.open("archive/data/0", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))  # 64 MiB of zeros deflate to ~64 KiB
    assert bomb.stat().st_size < 1 << 20
    message = refused(tmp_path, capsys, "--config", str(TINY_CONFIG), "--checkpoint", str(bomb),
                      "--out", str(tmp_path / "out"))
    assert "zip bomb" in message and "67108864 bytes" in message


def test_a_real_torch_checkpoint_passes_the_zip_check(tmp_path):
    import torch

    path = tmp_path / "ok.pth"
    torch.save({"state_dict": {"w": torch.zeros(256, 256)}}, path)
    archive._vet_checkpoint(path)  # no exception
