"""Build a TorchServe model archive (`archive.sh` wraps `python -m codetr_serve.tools.archive`).

config + checkpoint -> validated safetensors model dir + handler + our package + model-config.yaml -> .mar
(or a no-archive folder). The version defaults to a hash of everything packed, so a changed model gets a new
version and unchanged inputs rebuild nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from codetr_serve.runtime.weights import file_sha256

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parents[1]
# What a TorchServe worker imports: packed into every archive and hashed into its version. Archive-time
# conversion (convert/) and operator tools (tools/) stay out, so editing them never makes a "new model".
WORKER_PARTS = ("__init__.py", "runtime", "models", "ops")
HANDLER = REPO / "handler" / "co_detr_handler.py"
STAMP_SUFFIX = ".inputs-sha256"


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


def run_archiver(args: argparse.Namespace, version: str, extra: Path) -> None:
    args.out.mkdir(parents=True, exist_ok=True)  # torch-model-archiver 0.12 needs it to exist
    command = [str(Path(sys.executable).with_name("torch-model-archiver")),
               "--model-name", args.name, "--version", version, "--handler", str(HANDLER),
               "--extra-files", str(extra), "--config-file", str(args.model_config),
               "--export-path", str(args.out), "--archive-format",
               "no-archive" if args.format == "no-archive" else "default", "--force"]
    subprocess.run(command, check=True)


def build(args: argparse.Namespace) -> int:
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
        run_archiver(args, version, stage(args, staging))
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

    try:
        return build(args)
    except (ServingError, FileNotFoundError, ValueError) as error:
        print(f"archive.sh: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
