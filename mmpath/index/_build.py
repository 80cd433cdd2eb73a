"""``mmpath.index.build``: tile tables -> a trained, filled :class:`TileIndex`."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.errors import IndexError_
from mmpath.index import _center
from mmpath.index import _faiss as F
from mmpath.index import _ondisk as OD
from mmpath.index import _source as S
from mmpath.index import _tables as T
from mmpath.index._meta import MetaStore
from mmpath.index._store import MANIFEST_FILE, load, load_to_change
from mmpath.index.tileindex import TileIndex
from mmpath.io._atomic import pid_alive

log = logging.getLogger(__name__)

__all__ = ["build", "add", "remove"]

NORMALISATION = "l2"  # stored and query vectors are unit length: inner product = cosine


def build(
    adata,
    *,
    use_rep: str,
    factory: str | None = None,
    params: Mapping[str, Any] | None = None,
    gpu: bool | None = None,
    seed: int = 0,
    workers: int = 1,
    out: str | os.PathLike[str] | None = None,
    center: bool = False,
    whiten: bool = False,
) -> TileIndex:
    """Build a search index over the tiles of one or more tile tables.

    Parameters
    ----------
    adata
        A tile table, a list of them, a list of ``.h5ad`` paths, or an archive view
        (anything with a ``table_paths()`` method, e.g. ``mm.archive.open("archive/")``).
        Files are read one at a time (``obs``, ``obsm[use_rep]`` and provenance only) and
        never concatenated, so an archive larger than memory can be indexed.
    use_rep
        The obsm key to index: ``X_<slug>`` for image-to-image search, ``X_<slug>_proj``
        (the joint image-text space) when text queries are wanted.
    factory
        A faiss factory string (``"Flat"``, ``"HNSW32,Flat"``, ``"IVF1024,PQ128x4fs,RFlat"``...);
        ``None`` picks one by size (see :func:`mmpath.index.choose_factory`; from files
        above 200,000 tiles, ``IVF<n>,Flat``, whose lists can live on disk).
    params
        Query-time defaults (``nprobe``, ``efSearch``, ``k_factor``) overriding the factory's.
    gpu
        Search on the GPU: ``None`` when faiss-gpu and CUDA exist, ``True`` requires it,
        ``False`` never.
    seed
        Seed of the training sample.
    workers
        Processes that add blocks of tables in parallel (files and IVF factories only).
    out
        Write the index to this directory (atomically) and return it loaded from there.
        From files with a plain IVF factory, the inverted lists are merged into on-disk
        ``.ivfdata`` files that searches memory-map (built next to ``out``, or in the
        temporary directory when ``out`` is not given).
    center, whiten
        Subtract the mean of the indexed (unit) vectors, and optionally whiten them, before
        cosine search; the statistics are learnt here, stored in the manifest and applied to
        every later :meth:`~TileIndex.add` and every query (:mod:`mmpath.index._center`).
        Off by default: it did not improve mMV@5 on the data measured in the README, and it
        changes what "similar" means for text queries in a joint space. From files, the
        statistics are learnt exactly in one extra streamed pass, a table at a time.

    Returns
    -------
    A :class:`TileIndex`.

    Example
    -------
    >>> idx = mm.index.build(tiles, use_rep="X_conch_proj")
    >>> hits = idx.search_text("necrosis", k=20, encoder="conch")
    >>> idx = mm.index.build(mm.archive.open("archive/"), use_rep="X_uni", workers=8,
    ...                      out="archive.idx")
    """
    if int(workers) < 1:
        raise IndexError_(f"workers must be >= 1, got {workers}")
    if out is not None:
        _check_out(Path(out))
    if whiten and not center:
        raise IndexError_("whiten=True needs center=True (whitening is of centred vectors)")
    paths = S.as_paths(adata)
    if paths is not None:
        centring = (center, whiten)
        return _build_files(paths, use_rep, factory, params, gpu, seed, int(workers), out, centring)
    tables = T.as_tables(adata)
    if workers > 1:
        log.info("tables in memory are indexed in one process; workers apply to table files")
    got = T.collect(tables, use_rep, 0)
    n = len(got.vectors)
    if n == 0:
        raise IndexError_(
            "no tiles to index (the tables are empty or every tile is marked damaged)"
        )
    dim = int(got.vectors.shape[1])
    centring = _center.fit(got.vectors, whiten=whiten) if center else None
    vectors = _center.apply(got.vectors, centring)
    plan = F.choose(n, dim, factory)
    index = F.create(plan.factory, dim)
    F.train(index, vectors, seed=seed)
    index.add_with_ids(vectors, got.meta.index.to_numpy(np.int64))
    manifest = _manifest(got.embedding, use_rep, dim, plan, params, n, got.slides)
    if centring is not None:
        manifest["center"] = centring
    log.info(
        "indexed %d tiles of %d slide(s) with %s", n, got.meta[K.SLIDE_ID].nunique(), plan.factory
    )
    idx = TileIndex(index, got.meta, manifest, gpu=gpu)
    if out is None:
        return idx
    idx.save(out)
    return load(out, gpu=gpu)


def _manifest(embedding, use_rep, dim, plan, params, next_id, slides) -> dict[str, Any]:
    return {
        "encoder": embedding.get("encoder"),
        "embedding_key": use_rep,
        "embedding": embedding,
        "dim": dim,
        "normalisation": NORMALISATION,
        "metric": "inner_product",
        "factory": plan.factory,
        "params": {**plan.params, **F.check_params(params)},
        "next_id": int(next_id),
        "slides": slides,
        "mmpath_version": __version__,
    }


def _check_out(out: Path) -> None:
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise IndexError_(f"{str(out)!r} exists and is not an mmpath index; pick a new directory")


def _build_files(paths, use_rep, factory, params, gpu, seed, workers, out, centring) -> TileIndex:
    """Build from table files, one table at a time; IVF lists merged on disk."""
    sc = S.scan(paths, use_rep)
    if sc.n == 0:
        raise IndexError_(
            "no tiles to index (the tables are empty or every tile is marked damaged)"
        )
    spec = _fit_centring(sc, use_rep, whiten=centring[1]) if centring[0] else None
    plan = OD.plan(sc.n, sc.dim, factory)
    index = F.create(plan.factory, sc.dim)
    if not index.is_trained:
        rows = F.train_rows(index, sc.n, seed=seed)
        rows = np.arange(sc.n) if rows is None else rows
        sample = T.prepare(S.read_rows(sc, rows, use_rep), what=f"rows of obsm[{use_rep!r}]")
        F.fit(index, _center.apply(sample, spec), seed=seed, n_total=sc.n)
        del sample
    if not OD.can_go_on_disk(index):
        if workers > 1:
            log.info(
                "%s is built in memory, in one process (workers=%d unused)", plan.factory, workers
            )
        return _build_in_memory(sc, index, use_rep, plan, params, gpu, out, spec)
    work = _workdir(out)
    try:
        res = OD.build_blocks(sc, index, use_rep, work, workers=workers, center=spec)
        manifest = _manifest(sc.embedding, use_rep, sc.dim, plan, params, sc.n, res["slides"])
        manifest["build"] = res["build"]  # what ran: the CLI says so
        if spec is not None:
            manifest["center"] = spec
        meta = MetaStore.from_parquet(res["meta"])
        idx = TileIndex(res["parts"].view, meta, manifest, gpu=False, parts=res["parts"])
        log.info(
            "indexed %d tiles of %d slide(s) with %s on disk", sc.n, len(sc.slides), plan.factory
        )
        if out is None:
            weakref.finalize(idx, shutil.rmtree, work, True)
            return idx
        idx.save(out)
    finally:
        if out is not None:
            shutil.rmtree(work, ignore_errors=True)
    return load(out, gpu=gpu)


def _fit_centring(sc, use_rep: str, *, whiten: bool) -> dict[str, Any]:
    """Centring statistics of every usable vector, one table at a time (exact, streamed)."""
    moments = _center.Moments(scatter=whiten)
    for p, start in zip(sc.paths, sc.starts, strict=True):
        moments.update(T.collect([S.read_table(p, use_rep)], use_rep, int(start)).vectors)
    return moments.spec(whiten=whiten)


def _build_in_memory(sc, index, use_rep, plan, params, gpu, out, spec=None) -> TileIndex:
    """Add the tables one by one to an index held in memory (Flat, HNSW, refine factories)."""
    frames, slides = [], {}
    for p, start, count in zip(sc.paths, sc.starts, sc.counts, strict=True):
        got = T.collect([S.read_table(p, use_rep)], use_rep, int(start))
        slides.update(got.slides)
        if count:
            vectors = _center.apply(got.vectors, spec)
            index.add_with_ids(vectors, got.meta.index.to_numpy(np.int64))
            frames.append(got.meta)
    # one concatenation (appending table by table copied the growing frame each time)
    meta = frames[0] if len(frames) == 1 else T.append(frames[0], pd.concat(frames[1:]))
    manifest = _manifest(sc.embedding, use_rep, sc.dim, plan, params, sc.n, slides)
    manifest["build"] = {"blocks": 1, "processes": 1}
    if spec is not None:
        manifest["center"] = spec
    idx = TileIndex(index, meta, manifest, gpu=gpu)
    if out is None:
        return idx
    idx.save(out)
    return load(out, gpu=gpu)


def _workdir(out) -> Path:
    """A fresh folder for blocks and segments: next to ``out`` (so a save hard-links the
    lists instead of copying them), else in the temporary directory."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="mmpath-index-"))
    out = Path(out)
    for old in out.parent.glob(f".{out.name}.build-*"):  # left by a killed build
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    work = out.parent / f".{out.name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def add(index, adata, *, gpu: bool | None = None) -> TileIndex:
    """Add new slides' tiles to an index, without a rebuild; a saved index is updated on disk.

    Parameters
    ----------
    index
        A :class:`TileIndex`, or the directory of a saved one (loaded, extended and saved
        back atomically: a failure leaves it as it was).
    adata
        Tile tables, ``.h5ad`` paths or an archive view, as in :func:`build`.
    gpu
        As in :func:`build` (for a directory).

    Returns
    -------
    The extended :class:`TileIndex`.

    Example
    -------
    >>> idx = mm.index.add("archive.idx", ["new/S42.h5ad"])
    """
    if isinstance(index, TileIndex):
        index.add(adata)
        return index
    path = Path(index)
    idx = load_to_change(path, gpu=gpu)
    idx.add(adata)
    idx.save(path)
    return idx


def remove(
    index, slides: str | Sequence[str], *, compact: bool = False, gpu: bool | None = None
) -> TileIndex:
    """Remove slides' tiles from an index; a saved index is updated on disk.

    Parameters
    ----------
    index
        A :class:`TileIndex`, or the directory of a saved one (loaded, changed and saved
        back atomically: a failure leaves it as it was).
    slides
        Slide ids; one not in the index is refused before anything changes.
    compact
        Also rewrite the on-disk segments holding removed tiles without them (see
        :meth:`TileIndex.remove`); ``slides=[]`` compacts earlier removals only.
    gpu
        As in :func:`build` (for a directory).

    Returns
    -------
    The changed :class:`TileIndex`. An on-disk index keeps its ``.ivfdata`` lists and
    records the removed tile ids as tombstones that searches skip (see
    :meth:`TileIndex.remove`).

    Example
    -------
    >>> idx = mm.index.remove("archive.idx", ["S7", "S9"])
    """
    if isinstance(index, TileIndex):
        index.remove(slides, compact=compact)
        return index
    path = Path(index)
    idx = load_to_change(path, gpu=gpu)
    idx.remove(slides, compact=compact)
    idx.save(path)
    return idx
