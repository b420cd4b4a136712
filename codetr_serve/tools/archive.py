"""Build a TorchServe model archive (`archive.sh` wraps `python -m codetr_serve.tools.archive`).

config + checkpoint -> validated safetensors model dir + handler + our package + model-config.yaml -> .mar
(or a no-archive folder). The version defaults to a hash of everything packed, so a changed model gets a new
version and unchanged inputs rebuild nothing.

Inputs are vetted before anything is read or written (`vet_inputs`): a name or output folder that could
escape the output folder, a config that imports modules from outside our worker package (the worker would
import them too), and a checkpoint that is a symbolic link, not a regular file, or a zip bomb are refused.
A Python config is still code that mmengine runs when it parses it: only pack configs you trust.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from codetr_serve.runtime.weights import file_sha256

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parents[1]
# What a TorchServe worker imports: packed into every archive and hashed into its version. Archive-time
# conversion (convert/) and operator tools (tools/) stay out, so editing them never makes a "new model".
WORKER_PARTS = ("__init__.py", "runtime", "models", "ops")
HANDLER = REPO / "handler" / "co_detr_handler.py"
STAMP_SUFFIX = ".inputs-sha256"
# TorchServe's own rule for model names, and a version that is safe in file names and URLs.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
#: Modules a config may name in `custom_imports`: the worker side of our package, which every archive packs.
ALLOWED_IMPORTS = tuple(f"codetr_serve.{part}" for part in ("models", "ops", "runtime"))
#: torch.save writes its zip members uncompressed, so a checkpoint that inflates to much more than its own
#: size was not written by torch: a zip bomb, refused before anything reads it.
_MAX_INFLATION, _INFLATION_SLACK = 4, 16 << 20
#: .mar members under this folder (the safetensors weights) are stored uncompressed (see zip_model_folder).
STORED_FOLDER = "weights"


class ArchiveInputError(ValueError):
    """An archive input that is unsafe to use; the message says what to pass instead."""


def vet_inputs(args: argparse.Namespace) -> None:
    """Refuse unsafe inputs before reading or writing anything (see the module docstring)."""
    if not _NAME.fullmatch(args.name) or ".." in args.name:
        raise ArchiveInputError(f"--name {args.name!r} is not a model name: use letters, digits, '_', '-' "
                                "and '.', starting with a letter or digit (it becomes a file name and a URL)")
    if args.version is not None and not _VERSION.fullmatch(args.version):
        raise ArchiveInputError(f"--version {args.version!r} is not a version: use letters, digits and "
                                "'_', '-', '.', '+' (e.g. 1.2 or 1.0+abc123)")
    if ".." in args.out.parts:
        raise ArchiveInputError(f"--out {str(args.out)!r} contains '..': give the output folder without it "
                                "(an absolute path, or one below the current directory)")
    _vet_custom_imports(args.config)
    if args.checkpoint is not None:
        _vet_checkpoint(args.checkpoint)


def _vet_custom_imports(config: Path) -> None:
    from mmengine.config import Config

    if not config.is_file():
        raise FileNotFoundError(f"config {config} not found: pass an mmdet config file with --config")
    imports = (Config.fromfile(str(config), import_custom_modules=False).get("custom_imports") or {})
    names = imports.get("imports", []) if isinstance(imports, dict) else None
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list):
        raise ArchiveInputError(f"{config}: custom_imports must be dict(imports=[...]), got {imports!r}")
    outside = [n for n in names if not isinstance(n, str)
               or not any(n == allowed or n.startswith(allowed + ".") for allowed in ALLOWED_IMPORTS)]
    if outside:
        raise ArchiveInputError(
            f"{config}: custom_imports names {outside}, outside the package the worker ships; the worker "
            f"would import them at start. Register custom modules under {', '.join(ALLOWED_IMPORTS)} and "
            "import only those (the official configs need just codetr_serve.models).")


def _vet_checkpoint(checkpoint: Path) -> None:
    if checkpoint.is_symlink():
        raise ArchiveInputError(f"--checkpoint {checkpoint} is a symbolic link (to {checkpoint.readlink()}); "
                                "pass the real file, so what is packed is what you named")
    try:
        mode = checkpoint.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {checkpoint} not found") from None
    if not stat.S_ISREG(mode):
        raise ArchiveInputError(f"--checkpoint {checkpoint} is not a regular file; pass the .pth file itself")
    if zipfile.is_zipfile(checkpoint):
        size = checkpoint.stat().st_size
        with zipfile.ZipFile(checkpoint) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
        if inflated > _MAX_INFLATION * size + _INFLATION_SLACK:
            raise ArchiveInputError(
                f"--checkpoint {checkpoint} declares {inflated} bytes inside a {size}-byte file: torch "
                "checkpoints are stored uncompressed, so this is a zip bomb or not a checkpoint. Pass the "
                "file torch.save wrote.")


def _progress_printer(label: str):
    """Prints every 10 % of files over 256 MiB, so multi-GB checkpoints show they are moving."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if total > 256 << 20 and tenth != shown[0]:
            shown[0] = tenth
            print(f"  {label}: {tenth * 10}% of {total / 2**20:.0f} MiB", flush=True)
    return report


def package_files() -> list[Path]:
    """The worker-side files of our package, in a stable order."""
    files = []
    for part in WORKER_PARTS:
        path = PACKAGE / part
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def inputs_digest(config: Path, checkpoint: Path | None, model_config: Path, seed: int) -> str:
    """One hash over everything that ends up in the archive, computed before any conversion work."""
    from codetr_serve.runtime.model_loader import load_config

    digest = hashlib.sha256()
    digest.update(load_config(config).pretty_text.encode())  # the flattened config, bases included
    digest.update(file_sha256(checkpoint, progress=_progress_printer("hashing checkpoint")).encode()
                  if checkpoint
                  else f"random:{seed}".encode())
    for path in [HANDLER, model_config, *package_files()]:
        digest.update(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def archive_path(out: Path, name: str, fmt: str) -> Path:
    return out / name if fmt == "no-archive" else out / f"{name}.mar"


def stage(args: argparse.Namespace, staging: Path) -> Path:
    """Model dir + the worker side of our package, laid out as the archive's root."""
    from codetr_serve.convert.model_dir import pack_model_dir

    root = staging / "extra"
    print(f"validating and converting weights ({args.checkpoint or 'random weights'})", flush=True)
    pack_model_dir(args.config, args.checkpoint, root, seed=args.seed)
    for path in package_files():
        target = root / "codetr_serve" / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return root


def run_archiver(args: argparse.Namespace, version: str, extra: Path, export: Path) -> Path:
    """torch-model-archiver's folder layout (MAR-INF/MANIFEST.json + files) under `export`; returns it."""
    export.mkdir(parents=True, exist_ok=True)  # torch-model-archiver 0.12 needs it to exist
    command = [str(Path(sys.executable).with_name("torch-model-archiver")),
               "--model-name", args.name, "--version", version, "--handler", str(HANDLER),
               "--extra-files", str(extra), "--config-file", str(args.model_config),
               "--export-path", str(export), "--archive-format", "no-archive", "--force"]
    subprocess.run(command, check=True)
    return export / args.name


def zip_model_folder(folder: Path, target: Path) -> None:
    """Write the .mar from the archiver's folder; the weights are stored, everything else deflated.

    TorchServe unzips a .mar on every start: inflating ~900 MB of barely compressible weights took longer than
    loading them (docs/tuning.md, cold start); a stored member is a plain copy. Small files stay deflated.
    """
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            stored = name.startswith(f"{STORED_FOLDER}/")
            archive.write(path, name, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    partial.replace(target)


def publish(folder: Path, target: Path, fmt: str) -> None:
    """Move the built folder (no-archive) or a .mar zipped from it (zip) to `target`, replacing it."""
    if fmt != "no-archive":
        zip_model_folder(folder, target)
        return
    if target.exists():
        shutil.rmtree(target)
    folder.replace(target)


def build(args: argparse.Namespace) -> int:
    vet_inputs(args)
    target = archive_path(args.out, args.name, args.format)
    stamp = args.out / f".{args.name}.{args.format}{STAMP_SUFFIX}"
    digest = inputs_digest(args.config, args.checkpoint, args.model_config, args.seed)
    version = args.version or f"1.0+{digest[:12]}"
    if target.exists() and stamp.exists() and stamp.read_text().split() == [digest, version]:
        print(f"{target} is up to date (version {version}): inputs unchanged, nothing rebuilt")
        return 0
    staging = args.out / f".staging-{args.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        folder = run_archiver(args, version, stage(args, staging), staging / "export")
        publish(folder, target, args.format)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stamp.write_text(f"{digest} {version}\n")
    print(f"built {target} (version {version})")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="archive.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="mmdet config of the model")
    parser.add_argument("--checkpoint", type=Path, help="mmengine .pth; omit for seeded random weights")
    parser.add_argument("--name", default="co_detr", help="model name in URLs: /predictions/<name>")
    parser.add_argument("--version", help="model version (default: 1.0+<hash of everything packed>)")
    parser.add_argument("--format", choices=("zip", "no-archive"), default="zip",
                        help="zip: one .mar file; no-archive: a folder (recommended for 900 MB models)")
    parser.add_argument("--out", type=Path, default=REPO / "model_store")
    parser.add_argument("--model-config", type=Path, default=REPO / "config" / "model-config.yaml")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from codetr_serve.runtime.errors import ServingError
    from codetr_serve.runtime.weight_errors import WeightsError

    try:
        return build(args)
    except (ServingError, WeightsError, FileNotFoundError, ValueError) as error:
        print(f"archive.sh: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
