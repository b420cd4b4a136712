"""Every relative link and every repository path the README and docs/*.md name exists.

A path counts when it starts at the repository root (its first part is a tracked top-level entry) or inside
the package (`runtime/core.py`, as docs/architecture.md writes them). Paths git ignores are outputs a command
writes (bench/results/...), named so a reader can find them after a run; they need not exist.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGE = "codetr_serve"

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_FENCE = re.compile(r"^\s*```")
_PLACEHOLDER = re.compile(r"[<>*$={}()\[\],|]|\.\.\.")


@cache
def tracked() -> frozenset[str]:
    """Tracked files and the folders that hold them (POSIX, relative, folders without a trailing slash)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True,
                           text=True).stdout.split()
    folders = {str(Path(name).parents[i]) for name in files for i in range(len(Path(name).parts) - 1)}
    return frozenset(files) | frozenset(folders)


def exists(path: str) -> bool:
    """Tracked, or a module's attribute (`runtime/weights.load_serving_weights`) of a tracked module."""
    return path in tracked() or re.sub(r"\.\w+$", ".py", path) in tracked()


def ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for line in prose_lines(text):
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            found.add(base if base not in found else f"{base}-1")
    return found


def links(page: Path) -> list[str]:
    return [target for target in _LINK.findall(page.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", target)]


def named_paths(page: Path) -> set[str]:
    """Repository paths a page names, in code spans and in its command blocks."""
    text = page.read_text(encoding="utf-8")
    prose = prose_lines(text)
    tokens = {span for line in prose for span in _CODE_SPAN.findall(line)}
    tokens |= {word for line in text.splitlines() if line not in prose for word in line.split()}
    paths = set()
    top_level = {name.split("/")[0] for name in tracked()}
    for token in tokens:
        candidate = token.split("=")[-1].strip("'\".,;:").removeprefix("./").rstrip("/")
        if ("/" not in candidate or _PLACEHOLDER.search(candidate) or candidate.startswith("/")
                or " " in candidate):
            continue
        first = candidate.split("/")[0]
        if first in top_level:
            paths.add(candidate)
        elif (REPO / PACKAGE / first).is_dir():
            paths.add(f"{PACKAGE}/{candidate}")
    return paths


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_paths_exist(page):
    missing = sorted(path for path in named_paths(page) if not exists(path) and not ignored(path))
    assert not missing, f"{page.relative_to(REPO)} names paths that are not in the repository: {missing}"


def test_the_path_finder_sees_paths(tmp_path):
    # Guards the test above against finding nothing: spans, package-relative paths and command lines count;
    # placeholders, absolute paths and prose with spaces do not.
    page = tmp_path / "page.md"
    page.write_text("See `codetr_serve/runtime/core.py`, `runtime/codec.py`, `bench/results/<ts>/`,\n"
                    "`/abs/x.py` and `make bench` or `docs/nothing here`.\n\n```bash\n"
                    "make serve CONFIG=config/co_dino_tiny.py\n```\n", encoding="utf-8")
    assert named_paths(page) == {"codetr_serve/runtime/core.py", "codetr_serve/runtime/codec.py",
                                 "config/co_dino_tiny.py"}
