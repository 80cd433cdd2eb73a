"""Tile tables on disk and cohorts: atomic h5ad I/O and provenance-preserving concat."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.io._atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["write_h5ad", "read_h5ad", "concat"]


def write_h5ad(adata, path: str | os.PathLike[str]) -> Path:
    """Write a table to ``path`` atomically (a crash never leaves a half-written file).

    Example
    -------
    >>> mm.io.write_h5ad(tiles, "tiles/CMU-1.h5ad")
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def read_h5ad(path: str | os.PathLike[str]) -> AnnData:
    """Read a table, with a clear error for missing or damaged files."""
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise DataError(f"table file {str(p)!r} does not exist")
    try:
        return ad.read_h5ad(p)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for bad files
        raise DataError(f"cannot read {str(p)!r} as an .h5ad table ({err}); re-create it") from None


def concat(tables: Sequence, *, join: str = "inner") -> AnnData:
    """Concatenate tile tables into a cohort table, merging provenance by ``slide_id``.

    Plain ``anndata.concat`` drops ``uns``; this keeps every slide's record and each
    embedding's provenance. A slide that appears in two tables with different provenance is
    an error (it would make rows ambiguous).

    Parameters
    ----------
    tables
        Tile tables (one or more slides each).
    join
        ``"inner"`` keeps obsm/var present in every table, ``"outer"`` keeps all.

    Returns
    -------
    A new AnnData.

    Example
    -------
    >>> cohort = mm.io.concat([mm.io.read_h5ad(p) for p in paths])
    """
    import anndata as ad

    tables = list(tables)
    if not tables:
        raise DataError("concat needs at least one table")
    slides: dict = {}
    extra: dict = {}
    for t in tables:
        node = _prov.plain(_prov.root(t))
        for sid, rec in node.get(K.UNS_SLIDES, {}).items():
            if sid in slides and slides[sid] != rec:
                raise DataError(
                    f"slide {sid!r} appears in two tables with different provenance; "
                    "give the slides distinct slide_id values"
                )
            slides[sid] = rec
        for key, value in node.items():
            if key in (K.UNS_SLIDES, K.UNS_VERSION):
                continue
            if isinstance(value, dict):
                extra.setdefault(key, {}).update(value)
            else:
                extra.setdefault(key, value)
    names = [n for t in tables for n in t.obs_names]
    if len(set(names)) != len(names):
        raise DataError("tables share row names (the same slide twice?); give slides distinct ids")
    out = ad.concat(tables, join=join, merge="same")
    if K.SLIDE_ID in out.obs:
        out.obs[K.SLIDE_ID] = out.obs[K.SLIDE_ID].astype(str).astype("category")
    root = _prov.root(out)
    root[K.UNS_SLIDES] = slides
    root.update(extra)
    return out
