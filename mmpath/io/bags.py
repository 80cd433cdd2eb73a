"""Bags of tile embeddings for slide-level learning, streamed from tile tables.

A MIL model reads one bag ``(n_tiles, D)`` per slide from ``obsm[use_rep]``, never pixels.
:func:`build_bag_store` reads the tables **one at a time** (only ``obs`` and the one obsm
array, through anndata's element reader) and writes each slide's bag to an on-disk cache
(``<folder>/<i>.npy``, float32, memory-mapped on read, plus ``index.json``), so a cohort of
any size trains with memory flat in the number of slides. Every check a cohort can fail
(missing or mixed embeddings, NaN values, empty bags, a slide in two tables) runs here, before
any training starts.

Example
-------
>>> store = build_bag_store(["tiles/a.h5ad", "tiles/b.h5ad"], "runs/mil1/bags", use_rep="X_uni")
>>> store.bag("a").shape
(5120, 1024)
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.io._atomic import atomic_path
from mmpath.io._partial import read_parts

log = logging.getLogger(__name__)

__all__ = ["BagStore", "build_bag_store", "expand_tables", "iter_table_bags"]

INDEX = "index.json"
FORMAT = 1


def expand_tables(specs: str | os.PathLike[str] | Sequence[Any]) -> list[Path]:
    """Table paths from files, globs and folders (a folder: every ``*.h5ad`` in it, sorted).

    Example
    -------
    >>> expand_tables(["archive/tables/", "extra/*.h5ad"])
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[Path] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            found = sorted(path.glob("*.h5ad"))
        elif any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text))
        else:
            found = [path]
        if not found:
            raise DataError(f"no tile tables match {text!r}; pass .h5ad files, a glob or a folder")
        out += found
    for p in out:
        if not p.is_file():
            raise DataError(f"tile table {str(p)!r} does not exist")
    return list(dict.fromkeys(out))


def _read_parts(path: Path, use_rep: str) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
    """``(obs, obsm[use_rep] or None, uns['mmpath'] subset)`` without reading X or layers."""
    parts = read_parts(path, use_rep, uns_sections=(K.UNS_EMBEDDINGS, K.UNS_SLIDES))
    return parts.obs, None if parts.rep is None else np.asarray(parts.rep), parts.uns


def iter_table_bags(tables: Any, use_rep: str) -> Iterator[tuple[str, str, np.ndarray, str | None]]:
    """``(table name, slide_id, bag (n, D) float32, encoder)`` per slide, one table at a time.

    ``tables`` is an AnnData, a list of AnnData, or paths/globs/folders of ``.h5ad``. Slides
    named in a table's provenance but without rows yield an empty bag ``(0, D)``.
    """
    items: list[Any]
    if hasattr(tables, "obs"):
        items = [tables]
    elif isinstance(tables, (list, tuple)) and tables and all(hasattr(t, "obs") for t in tables):
        items = list(tables)
    else:
        items = list(expand_tables(tables))
    for i, item in enumerate(items):
        if hasattr(item, "obs"):
            name = f"table {i}"
            obs, node = item.obs, _prov.plain(item.uns.get(K.UNS, {}) or {})
            rep = np.asarray(item.obsm[use_rep]) if use_rep in item.obsm else None
        else:
            name = str(item)
            obs, rep, node = _read_parts(item, use_rep)
        if K.SLIDE_ID not in obs:
            if K.N_TILES in obs:
                raise DataError(f"{name} is a slide table, not a tile table; pass tile tables")
            raise DataError(f"{name} has no obs['slide_id']; is it an mmpath tile table?")
        if rep is None:
            have = ", ".join(str(k) for k in (node.get(K.UNS_EMBEDDINGS) or {})) or "none"
            raise DataError(
                f"{name} has no obsm[{use_rep!r}] (embeddings recorded: {have}); embed it "
                f"with the same encoder (mmpath embed) or set use_rep"
            )
        if rep.ndim != 2:
            raise DataError(f"{name}: obsm[{use_rep!r}] is not a 2-d array")
        encoder = ((node.get(K.UNS_EMBEDDINGS) or {}).get(use_rep) or {}).get("encoder")
        sid = obs[K.SLIDE_ID].astype(str).to_numpy()
        listed = [str(s) for s in (node.get(K.UNS_SLIDES) or {})]
        for slide in dict.fromkeys([*_unique(sid), *listed]):
            rows = np.flatnonzero(sid == slide)
            yield name, slide, np.asarray(rep[rows], dtype=np.float32), encoder


def _unique(values: np.ndarray) -> list[str]:
    """Unique values in order of first appearance."""
    return list(dict.fromkeys(values.tolist()))


@dataclass(frozen=True)
class BagStore:
    """An on-disk bag cache: ``bag(slide_id)`` memory-maps one slide's ``(n, D)`` float32."""

    folder: Path
    index: dict[str, Any]

    @property
    def slides(self) -> list[str]:
        """Slide ids in the store (including empty ones)."""
        return list(self.index["slides"])

    @property
    def dim(self) -> int:
        return int(self.index["dim"])

    @property
    def encoder(self) -> str | None:
        return self.index.get("encoder")

    @property
    def use_rep(self) -> str:
        return str(self.index["use_rep"])

    def n_tiles(self, slide_id: str) -> int:
        """Number of tiles in a slide's bag."""
        return int(self.index["slides"][slide_id]["n"])

    def bag(self, slide_id: str) -> np.ndarray:
        """The slide's bag ``(n, D)`` (read-only memory map)."""
        rec = self.index["slides"].get(slide_id)
        if rec is None:
            raise DataError(f"slide {slide_id!r} is not in the bag store {str(self.folder)!r}")
        if rec["n"] == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.load(self.folder / rec["file"], mmap_mode="r")


def _fingerprint(tables: Any, use_rep: str) -> str | None:
    if hasattr(tables, "obs") or (
        isinstance(tables, (list, tuple)) and tables and hasattr(tables[0], "obs")
    ):
        return None  # in-memory tables: always rebuilt
    h = hashlib.sha256(use_rep.encode())
    for p in expand_tables(tables):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def build_bag_store(tables: Any, folder: str | os.PathLike[str], *, use_rep: str) -> BagStore:
    """Write every slide's bag of ``obsm[use_rep]`` to ``folder`` (reused when up to date).

    Parameters
    ----------
    tables
        An AnnData, a list of them, or ``.h5ad`` paths / globs / folders.
    folder
        Cache folder (written atomically; reused when the tables are unchanged).
    use_rep
        obsm key of the tile embeddings.

    Returns
    -------
    A :class:`BagStore`.

    Raises :class:`~mmpath.errors.DataError` for a slide in two tables, embeddings of
    different widths or encoders, and NaN/inf values (naming the slide).

    Example
    -------
    >>> store = build_bag_store("tiles/", "runs/mil1/bags", use_rep="X_uni")
    """
    folder = Path(folder)
    fp = _fingerprint(tables, use_rep)
    if fp is not None and (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        if index.get("fingerprint") == fp and index.get("format") == FORMAT:
            return BagStore(folder, index)
    slides: dict[str, Any] = {}
    dim = encoder = first = None
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for name, slide, bag, enc in iter_table_bags(tables, use_rep):
            if slide in slides:
                raise DataError(
                    f"slide {slide!r} is in two tables ({slides[slide]['table']} and {name}); "
                    "pass each slide once"
                )
            if dim is None:
                dim, encoder, first = bag.shape[1], enc, name
            elif bag.shape[1] != dim or (enc and encoder and enc != encoder):
                raise DataError(
                    f"{name} holds {use_rep} from {enc or '?'} ({bag.shape[1]}-d) but {first} "
                    f"from {encoder or '?'} ({dim}-d): embeddings of different encoders cannot "
                    "form one cohort; re-embed every table with one encoder"
                )
            bad = ~np.isfinite(bag).all(axis=1)
            if bad.any():
                raise DataError(
                    f"slide {slide!r} ({name}) has {int(bad.sum())} tiles with NaN/inf "
                    f"embeddings in {use_rep}; re-embed it or drop those tiles"
                )
            rec = {"n": int(len(bag)), "file": f"{len(slides)}.npy", "table": name}
            if len(bag):
                np.save(tmp / rec["file"], np.ascontiguousarray(bag, dtype=np.float32))
            slides[slide] = rec
        if dim is None:
            raise DataError("no tile tables given")
        index = {
            "format": FORMAT,
            "use_rep": use_rep,
            "dim": int(dim),
            "encoder": encoder,
            "fingerprint": fp,
            "slides": slides,
        }
        (tmp / INDEX).write_text(json.dumps(index), encoding="utf-8")
    log.info("bag store %s: %d slides, %d-d %s", folder, len(slides), dim, use_rep)
    return BagStore(folder, index)
