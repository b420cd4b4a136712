"""The GPU architectures a compiled library carries: read from the `.nv_fatbin` section of its ELF file.

nvcc puts each kernel's machine code (SASS, one per `sm_XY`) and PTX (`compute_XY`, JIT-compiled by the
driver for newer GPUs) into fat-binary containers in that section. Reading the container and entry headers
gives the arch list without a GPU, a CUDA toolkit (`cuobjdump`) or importing the library, so the doctor can
say which GPUs mmcv's kernels cover on a build machine or in the runtime image (which has no nvcc).

Layout (little-endian, as written by nvcc's `fatbinary`): a container is a 16-byte header (u32 magic
0xBA55ED50, u16 version, u16 header size, u64 size of the entries that follow), then entries, each a header
(u16 kind: 1 PTX, 2 ELF; u16; u32 header size; u64 payload size; ...; u32 arch at byte 28, e.g. 90) followed
by its payload. A section holds many containers, one per compiled source file.

`python codetr_serve/tools/cuda_archs.py LIBRARY [--require LIST]` prints a library's arch list and, with
--require, exits 1 when it lacks an entry a build for that TORCH_CUDA_ARCH_LIST has: scripts/setup.sh runs
it by path (standard library only) so that a cached mmcv wheel built for fewer GPUs is not reused.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from pathlib import Path
from typing import BinaryIO

FATBIN_MAGIC = 0xBA55ED50
KIND_PREFIX = {1: "compute", 2: "sm"}  # PTX entries are named like nvcc's -gencode code=compute_XY
ENTRY_HEADER = struct.Struct("<HHIQ12xI")  # kind, version, header size, payload size, (12 bytes), arch
CONTAINER_HEADER = struct.Struct("<IHHQ")


class NotAnElfFile(ValueError):
    """The file is not a 64-bit little-endian ELF object."""


def elf_section(handle: BinaryIO, name: str) -> tuple[int, int] | None:
    """(file offset, size) of the section called `name` in a 64-bit little-endian ELF file, else None."""
    handle.seek(0)
    ident = handle.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise NotAnElfFile("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
    handle.seek(shoff)
    table = handle.read(shentsize * shnum)
    headers = [struct.unpack_from("<IIQQQQ", table, index * shentsize) for index in range(shnum)]
    if not headers or shstrndx >= len(headers):
        return None
    _, _, _, _, names_offset, names_size = headers[shstrndx]
    handle.seek(names_offset)
    names = handle.read(names_size)
    wanted = name.encode()
    for name_index, _, _, _, offset, size in headers:
        if names[name_index:names.find(b"\0", name_index)] == wanted:
            return offset, size
    return None


def _container_entries(handle: BinaryIO, start: int, end: int) -> tuple[set[str], int]:
    """Arch names of the entries of the container at `start`, and where the container ends."""
    handle.seek(start)
    magic, _version, header_size, body_size = CONTAINER_HEADER.unpack(handle.read(CONTAINER_HEADER.size))
    if magic != FATBIN_MAGIC:
        raise ValueError(f"no fat-binary container at {start:#x}")
    archs: set[str] = set()
    entry, body_end = start + header_size, min(start + header_size + body_size, end)
    while entry + ENTRY_HEADER.size <= body_end:
        handle.seek(entry)
        header = handle.read(ENTRY_HEADER.size)
        kind, _version, entry_header_size, payload_size, arch = ENTRY_HEADER.unpack(header)
        if kind in KIND_PREFIX and arch:
            archs.add(f"{KIND_PREFIX[kind]}_{arch}")
        if entry_header_size == 0:
            break
        entry += entry_header_size + payload_size
    return archs, body_end


def fatbin_archs(path: str | Path) -> tuple[str, ...]:
    """Arch names (`sm_80`, ..., `compute_90`) that every fat-binary container in `path` carries, sorted; ()
    for a CPU-only library. The intersection, not the union: a GPU is covered only if all kernels have code
    for it (torch, for one, builds a few kernels for extra archs besides its arch list)."""
    with open(path, "rb") as handle:
        section = elf_section(handle, ".nv_fatbin")
        if section is None:
            return ()
        offset, size = section
        archs: set[str] | None = None
        position, end = offset, offset + size
        while position + CONTAINER_HEADER.size <= end:
            handle.seek(position)
            if struct.unpack("<I", handle.read(4))[0] != FATBIN_MAGIC:
                position += 8  # containers start 8-byte aligned; padding sits between them
                continue
            found, position = _container_entries(handle, position, end)
            archs = found if archs is None else archs & found
    return tuple(sorted(archs or (), key=arch_sort_key))


def arch_sort_key(name: str) -> tuple[int, int]:
    """sm_XY before compute_XY, each by number: sm_80 < sm_90 < sm_100 < compute_90."""
    kind, _, number = name.partition("_")
    return (kind == "compute", int(number) if number.isdigit() else 0)


def required_archs(arch_list: str) -> frozenset[str] | None:
    """The entries a build for TORCH_CUDA_ARCH_LIST `arch_list` carries: `9.0` -> sm_90, `9.0+PTX` -> sm_90
    and compute_90 (an `a`/`f` suffix counts as its base arch). None when an entry is a name such as
    `Ampere`, which this reader does not expand: then nothing can be checked."""
    wanted: set[str] = set()
    for entry in filter(None, re.split(r"[;\s]+", arch_list.strip())):
        match = re.fullmatch(r"(\d+)\.(\d+)[af]?(\+PTX)?", entry)
        if not match:
            return None
        number = f"{match.group(1)}{match.group(2)}"
        wanted.add(f"sm_{number}")
        if match.group(3):
            wanted.add(f"compute_{number}")
    return frozenset(wanted)


def missing_archs(arch_list: str, built: tuple[str, ...]) -> tuple[str, ...]:
    """What a library carrying `built` lacks for `arch_list`, sorted; () when covered or not checkable."""
    wanted = required_archs(arch_list)
    return tuple(sorted((wanted or frozenset()) - set(built), key=arch_sort_key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the GPU architectures a compiled library carries")
    parser.add_argument("library")
    parser.add_argument("--require", metavar="LIST", help="a TORCH_CUDA_ARCH_LIST the library must cover")
    args = parser.parse_args(argv)
    built = fatbin_archs(args.library)
    print(" ".join(built) or "no CUDA code")
    missing = missing_archs(args.require, built) if args.require else ()
    if missing:
        print(f"lacks {' '.join(missing)} of TORCH_CUDA_ARCH_LIST={args.require}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
