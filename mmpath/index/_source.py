"""What an index is built from: tile tables in memory, or ``.h5ad`` files read one at a time.

A source is an AnnData, a sequence of AnnData, a sequence of ``.h5ad`` paths, or any object
with a ``table_paths()`` method (an archive view, :func:`mmpath.archive.open`; duck-typed so
this layer does not import the higher one). Files are read partially: ``obs``, the one
``obsm[use_rep]`` and ``uns["mmpath"]``, never ``X`` or the other embeddings, and only one
table at a time, so building from an archive never holds it whole in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmpath import _keys as K
from mmpath.errors import DataError, IndexError_
from mmpath.io import _prov
from mmpath.io._partial import open_h5, read_parts

__all__ = ["as_paths", "read_table", "scan", "Scan"]


def as_paths(source) -> list[Path] | None:
    """The table files of ``source``, or ``None`` when it is in-memory AnnData."""
    if hasattr(source, "obsm"):
        return None
    if hasattr(source, "table_paths") and callable(source.table_paths):
        paths = [Path(p) for p in source.table_paths()]
    elif isinstance(source, (str, os.PathLike)):
        paths = [Path(source)]
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, str)):
        if all(hasattr(t, "obsm") for t in source):
            return None
        if not all(isinstance(p, (str, os.PathLike)) for p in source):
            raise DataError(
                "expected a tile table (AnnData), a list of them, a list of .h5ad paths or an "
                "archive (mm.archive.open); got a mixed or unknown list"
            )
        paths = [Path(p) for p in source]
    else:
        raise DataError(
            "expected a tile table (AnnData), a list of them, a list of .h5ad paths or an "
            f"archive (mm.archive.open), got {type(source).__name__}"
        )
    for p in paths:
        if p.is_dir():
            raise DataError(
                f"{str(p)!r} is a folder; pass its .h5ad tables or mm.archive.open({str(p)!r})"
            )
        if not p.is_file():
            raise DataError(f"table file {str(p)!r} does not exist")
    return paths


_open = open_h5  # the one partial reader lives in mmpath.io._partial


def _read_parts(path: Path, use_rep: str | None, rows: np.ndarray | None = None):
    """``(obs, uns_mmpath, vectors, or the file's embedding keys when use_rep is absent)``."""
    parts = read_parts(path, use_rep, rows=rows)
    return parts.obs, parts.uns, parts.rep_keys if parts.rep is None else parts.rep


def read_light(path: Path):
    """A light AnnData of one file: obs and ``uns["mmpath"]`` only (no vectors)."""
    import anndata as ad

    obs, uns, _ = _read_parts(Path(path), None)
    t = ad.AnnData(obs=obs)
    t.uns[K.UNS] = uns
    return t


def read_table(path: Path, use_rep: str):
    """A light AnnData of one file: obs, ``obsm[use_rep]`` and ``uns["mmpath"]`` only."""
    import anndata as ad

    obs, uns, x = _read_parts(Path(path), use_rep)
    t = ad.AnnData(obs=obs)
    if not isinstance(x, list):
        t.obsm[use_rep] = np.asarray(x)
    t.uns[K.UNS] = uns
    return t


def _rep_keys(path: Path) -> list[str]:
    with _open(path) as f:
        return [k for k in f.get("obsm", {}) if k.startswith(K.REP_PREFIX)]


@dataclass
class Scan:
    """What the first pass over the files learned (everything but the vectors)."""

    paths: list[Path]
    counts: np.ndarray  # usable rows per table
    starts: np.ndarray  # first tile id of each table
    ok: dict[int, np.ndarray]  # tables with damaged rows: their usable-row mask
    dim: int
    embedding: dict[str, Any] = field(default_factory=dict)
    slides: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def scan(paths: Sequence[Path], use_rep: str, start_id: int = 0) -> Scan:
    """Check every file (tile table, ``obsm[use_rep]``, one encoder, one dim, each slide once)
    and count its usable rows, reading obs and provenance only."""
    from mmpath.index._tables import embedding_record

    counts, ok, dims, slides = [], {}, set(), {}
    embedding: dict[str, Any] = {}
    for i, p in enumerate(paths):
        light = read_light(Path(p))
        obs = light.obs
        what = repr(str(p))
        _prov.require_tile_table(light, what)
        with _open(Path(p)) as f:
            elem = f["obsm"][use_rep] if "obsm" in f and use_rep in f["obsm"] else None
            shape = tuple(elem.shape) if elem is not None and hasattr(elem, "shape") else None
            if elem is not None and shape is None:
                shape = tuple(elem.attrs.get("shape", ()))
        if shape is None:
            raise DataError(
                f"{what} has no obsm[{use_rep!r}]; embed it first (mm.tl.embed) or pick one "
                f"of {_rep_keys(Path(p))}"
            )
        if len(shape) != 2 or shape[0] != len(obs):
            raise DataError(f"{what}: obsm[{use_rep!r}] has shape {shape} for {len(obs)} rows")
        rec = embedding_record(light, use_rep)
        if rec and embedding and rec.get("encoder") != embedding.get("encoder"):
            raise IndexError_(
                f"tables embedded with different encoders ({embedding.get('encoder')!r} and "
                f"{rec.get('encoder')!r}, in {what}) cannot share an index"
            )
        embedding = embedding or rec
        mask = obs[K.TILE_OK].to_numpy(bool) if K.TILE_OK in obs else None
        if mask is not None and not mask.all():
            ok[i] = mask
        counts.append(int(mask.sum()) if mask is not None else len(obs))
        if len(obs):
            dims.add(int(shape[1]))
        for sid in obs[K.SLIDE_ID].astype(str).unique():
            if sid in slides:
                raise IndexError_(
                    f"slide {sid!r} is in both {str(slides[sid])!r} and {str(p)!r}; index each "
                    "slide once"
                )
            slides[sid] = p
    if len(dims) > 1:
        raise IndexError_(f"obsm[{use_rep!r}] has different dims across tables: {sorted(dims)}")
    counts_a = np.asarray(counts, np.int64)
    starts = start_id + np.r_[0, np.cumsum(counts_a)[:-1]].astype(np.int64)
    return Scan(
        list(map(Path, paths)),
        counts_a,
        starts[: len(counts_a)],
        ok,
        dims.pop() if dims else 0,
        embedding,
        list(slides),
    )


def read_rows(sc: Scan, rows: np.ndarray, use_rep: str) -> np.ndarray:
    """The (unnormalised) vectors at global usable positions ``rows`` (sorted), table by table."""
    out = np.empty((len(rows), sc.dim), np.float32)
    bounds = np.r_[0, np.cumsum(sc.counts)]
    for i, p in enumerate(sc.paths):
        lo, hi = np.searchsorted(rows, [bounds[i], bounds[i + 1]])
        if hi == lo:
            continue
        local = rows[lo:hi] - bounds[i]
        raw = np.flatnonzero(sc.ok[i])[local] if i in sc.ok else local
        _, _, x = _read_parts(p, use_rep, rows=raw)
        out[lo:hi] = np.asarray(x, np.float32)
    return out
