"""Tiny synthetic slide archives for the archive tests (pyramidal TIFFs, ~60 KB each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .archive_helpers import CORRUPT, N_SLIDES, make_slide, truncate


@pytest.fixture(scope="session")
def archive_slides(tmp_path_factory) -> Path:
    """A folder of 19 good slides (s000..s018, in nested folders) and one truncated slide."""
    root = tmp_path_factory.mktemp("archive_slides")
    for i in range(N_SLIDES - 1):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        make_slide(sub / f"s{i:03d}.tif", i)
    truncate(root / "b" / "s000.tif", root / f"{CORRUPT}.tif")
    (root / "notes.txt").write_text("not a slide")  # ignored by the folder scan
    return root


@pytest.fixture()
def few_slides(tmp_path, archive_slides) -> Path:
    """A fresh folder with 3 good slides (copies, so tests may modify them)."""
    out = tmp_path / "slides"
    out.mkdir()
    for name in ("s001", "s002", "s003"):
        src = next(archive_slides.rglob(f"{name}.tif"))
        shutil.copy2(src, out / src.name)
    return out
