"""The repository cites its own sources: no tracked file outside tests/ points readers at the
project's private research notes (FACTS.md, ENGINEERING.md, DESIGN.md, STYLE.md, under a
shared/ folder outside the repository). Sources belong in docs/sources.md or beside the
default they support."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The notes by name, their "FACTS s.8" / "FACTS section 8" short forms, and the folder.
PRIVATE = re.compile(
    r"\b(?:FACTS|ENGINEERING|DESIGN|STYLE)\.md\b"
    r"|\bFACTS(?:-derived| s\.| section| §)"
    r"|/work/shared\b"
)


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [p for p in out.split("\0") if p and not p.startswith("tests/")]


def test_no_tracked_file_cites_the_private_notes() -> None:
    hits = []
    for rel in tracked_files():
        path = ROOT / rel
        if not path.is_file():
            continue  # deleted in the working tree
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (images, fixtures)
        for n, line in enumerate(text.splitlines(), 1):
            if PRIVATE.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not hits, "cite docs/sources.md instead:\n" + "\n".join(hits)


def test_the_pattern_catches_every_form() -> None:
    for bad in (
        "(FACTS.md section 7)", "FACTS s.8", "(ENGINEERING.md 4)", "STYLE.md: a rule",
        "DESIGN.md budgets", "/work/shared/FACTS.md", "FACTS-derived", "FACTS section 2",
    ):  # fmt: skip
        assert PRIVATE.search(bad), bad
    for good in ("docs/sources.md S7", "ARTIFACTS / 'x.png'", "FACTS_TABLE = 1"):
        assert not PRIVATE.search(good), good
