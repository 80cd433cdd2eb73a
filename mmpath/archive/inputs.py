"""Which slides an archive run covers: a folder (recursive), a glob, a CSV, or a list.

A CSV (or DataFrame) has a ``path`` column and optionally ``slide_id``, ``mpp`` (a per-slide
level-0 µm/px that overrides the file's metadata) and any other columns, which are joined into
the slide's tile table (``obs``) with :func:`mmpath.io.join_metadata`. Relative paths in a
CSV are relative to the CSV's folder. Slide ids default to the file stem and must be unique.
"""

from __future__ import annotations

import glob as _glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmpath._names import check_name
from mmpath.errors import ArchiveError
from mmpath.io.slide import _stem

__all__ = ["SlideTask", "resolve_inputs", "SLIDE_EXTENSIONS"]

# Whole-slide formats picked up when scanning a folder (plain images are not: thumbnails and
# masks live next to slides; list them in a CSV to include them).
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
    ".qptiff",
)  # fmt: skip
_RESERVED = ("path", "slide_id", "mpp")


@dataclass(frozen=True)
class SlideTask:
    """One slide of a run: its id, absolute path, mpp override and metadata for obs."""

    slide_id: str
    path: str
    mpp: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"slide_id": self.slide_id, "path": self.path, "mpp": self.mpp,
                "metadata": dict(self.metadata)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlideTask:
        return cls(d["slide_id"], d["path"], d.get("mpp"), dict(d.get("metadata") or {}))


def _plain(v: Any) -> Any:
    """A JSON-able scalar (numpy types to Python; NaN to None)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _scan(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and f.lower().endswith(SLIDE_EXTENSIONS):
                found.append(Path(root) / f)
    return found


def _from_table(df: pd.DataFrame, base: Path | None, what: str) -> list[SlideTask]:
    if "path" not in df.columns:
        raise ArchiveError(
            f"{what} has no 'path' column (columns: {', '.join(map(str, df.columns[:10]))}); "
            "name the column of slide files 'path'"
        )
    meta_cols = [c for c in df.columns if c not in _RESERVED]
    tasks = []
    for i, row in enumerate(df.itertuples(index=False, name=None)):
        rec = dict(zip(df.columns, row))
        raw = rec["path"]
        if not isinstance(raw, str) or not raw.strip():
            raise ArchiveError(f"{what} row {i + 1}: empty 'path'")
        p = Path(raw.strip()).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        sid = _plain(rec.get("slide_id"))
        sid = str(sid).strip() if sid not in (None, "") else _stem(p)
        mpp = _plain(rec.get("mpp"))
        if mpp is not None:
            try:
                mpp = float(mpp)
            except (TypeError, ValueError):
                raise ArchiveError(f"{what} row {i + 1}: mpp {mpp!r} is not a number") from None
            if not mpp > 0:
                raise ArchiveError(f"{what} row {i + 1}: mpp must be > 0, got {mpp}")
        meta = {c: _plain(rec[c]) for c in meta_cols}
        tasks.append(SlideTask(sid, str(p.absolute()), mpp, meta))
    return tasks


def resolve_inputs(slides: Any) -> list[SlideTask]:
    """The slides of a run, in a stable order.

    Parameters
    ----------
    slides
        A folder (scanned recursively for :data:`SLIDE_EXTENSIONS`), a glob (``"s/*.svs"``),
        a ``.csv``/``.tsv`` file or a DataFrame with a ``path`` column, one slide file, or a
        list of any of these.

    Returns
    -------
    A list of :class:`SlideTask`.
    """
    items = list(slides) if isinstance(slides, (list, tuple)) else [slides]
    tasks: list[SlideTask] = []
    for item in items:
        if isinstance(item, pd.DataFrame):
            tasks += _from_table(item, None, "the slide table")
            continue
        text = os.fspath(item)
        p = Path(text).expanduser()
        if _is_glob(text) and not p.exists():
            hits = sorted(Path(h) for h in _glob.glob(str(p), recursive=True))
            files = [h for h in hits if h.is_file()]
            if not files:
                raise ArchiveError(f"no file matches {text!r}; check the pattern")
            tasks += [SlideTask(_stem(f), str(f.absolute())) for f in files]
        elif p.is_dir() and not p.name.lower().endswith(SLIDE_EXTENSIONS):
            files = _scan(p)
            if not files:
                raise ArchiveError(
                    f"folder {text!r} holds no slide files ({', '.join(SLIDE_EXTENSIONS[:6])}"
                    " ...); list other files in a CSV with a 'path' column"
                )
            tasks += [SlideTask(_stem(f), str(f.absolute())) for f in files]
        elif p.suffix.lower() in (".csv", ".tsv") or p.name.lower().endswith(".csv.gz"):
            if not p.is_file():
                raise ArchiveError(f"slide list {text!r} does not exist")
            try:
                df = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",")
            except Exception as err:  # noqa: BLE001 - pandas raises many types
                raise ArchiveError(f"cannot read slide list {text!r}: {err}") from None
            tasks += _from_table(df, p.parent, repr(text))
        elif p.exists():
            tasks.append(SlideTask(_stem(p), str(p.absolute())))
        else:
            raise ArchiveError(f"input {text!r} is not a file, folder, glob or CSV; check it")
    return _check_ids(tasks)


def _check_ids(tasks: Sequence[SlideTask]) -> list[SlideTask]:
    if not tasks:
        raise ArchiveError("no slides to process")
    seen: dict[str, str] = {}
    out = []
    for t in tasks:
        check_name(t.slide_id, what="slide id")
        if t.slide_id in seen:
            if seen[t.slide_id] == t.path:
                continue  # the same file listed twice
            raise ArchiveError(
                f"slides {seen[t.slide_id]!r} and {t.path!r} share the slide id {t.slide_id!r};"
                " give them distinct ids in a CSV 'slide_id' column"
            )
        seen[t.slide_id] = t.path
        out.append(t)
    return out
