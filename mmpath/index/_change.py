"""Changing an index in place: adding tables (files read one at a time) and removing slides."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import IndexError_
from mmpath.index import _center
from mmpath.index import _faiss as F
from mmpath.index import _source as S
from mmpath.index import _tables as T

log = logging.getLogger(__name__)


def add(idx, adata) -> int:
    """See :meth:`mmpath.index.TileIndex.add`."""
    start = int(idx.manifest["next_id"])
    paths = S.as_paths(adata)
    if paths is None:
        got = T.collect(T.as_tables(adata), idx.embedding_key, start)
        if len(got.vectors) == 0:
            return 0
        _check_new(idx, got.vectors.shape[1], got.embedding.get("encoder"), got.meta[K.SLIDE_ID])
        _add_collected(idx, got)
        return len(got.vectors)
    sc = S.scan(paths, idx.embedding_key, start)
    if sc.n == 0:
        return 0
    _check_new(idx, sc.dim, sc.embedding.get("encoder"), sc.slides)
    # vectors table by table; the metadata of the whole batch joins the store once (appending
    # per table re-coded every tile already indexed each time: O(tables x N))
    done: list[T.Collected] = []
    try:
        for p, begin, count in zip(sc.paths, sc.starts, sc.counts, strict=True):
            if count:
                got = T.collect([S.read_table(p, idx.embedding_key)], idx.embedding_key, begin)
                _add_vectors(idx, got)
                done.append(got)
    finally:  # what faiss holds, the metadata holds (even when a table fails to read)
        if done:
            _add_meta(idx, done)
    return sc.n


def _check_new(idx, dim: int, encoder: str | None, slides) -> None:
    """Refuse new tiles of another dim or encoder, or of slides already indexed."""
    if dim != idx.dim:
        raise IndexError_(
            f"obsm[{idx.embedding_key!r}] of the new tables has dim {dim} "
            f"but the index holds {idx.dim}-d vectors"
        )
    idx.check_encoder(encoder)
    dup = {str(v) for v in pd.unique(np.asarray(slides, dtype=str))} & set(idx.slide_ids)
    if dup:
        raise IndexError_(
            f"slide(s) {sorted(dup)[:5]} are already in the index; remove them first "
            "(idx.remove(...)) to replace them"
        )


def _add_collected(idx, got) -> None:
    _add_vectors(idx, got)
    _add_meta(idx, [got])


def _add_vectors(idx, got) -> None:
    ids = got.meta.index.to_numpy(np.int64)
    vectors = _center.apply(got.vectors, idx.manifest.get("center"))
    if idx._parts is not None:
        idx._parts.add(vectors, ids)
        idx.index = idx._parts.view
        F.apply_params(idx.index, idx.params)
    else:
        idx.index.add_with_ids(vectors, ids)


def _add_meta(idx, batch: list) -> None:
    """Metadata, provenance and the next id of collected tables whose vectors were added."""
    meta = batch[0].meta if len(batch) == 1 else pd.concat([g.meta for g in batch])
    idx._meta.append(meta)
    idx.manifest["next_id"] = int(meta.index.max()) + 1
    for got in batch:
        idx.manifest.setdefault("slides", {}).update(got.slides)
        if not idx.encoder and got.embedding.get("encoder"):
            idx.manifest["encoder"] = got.embedding["encoder"]
    idx._changed()
    log.info("added %d tiles of %d slide(s)", len(meta), meta[K.SLIDE_ID].nunique())


def remove(idx, slides: str | Sequence[str], *, compact: bool = False) -> int:
    """See :meth:`mmpath.index.TileIndex.remove`."""
    slides = [slides] if isinstance(slides, str) else [str(s) for s in slides]
    unknown = sorted(set(slides) - set(idx.slide_ids))
    if unknown:
        raise IndexError_(f"slide(s) {unknown[:5]} are not in the index")
    ids = idx._meta.ids[np.isin(idx._meta.slides_of(idx._meta.ids), slides)]
    if idx._parts is not None:  # read-only lists: tombstones (see mmpath.index._ondisk)
        before = len(idx)
        idx._parts.remove(ids, compact=compact)
        idx.index = idx._parts.view
        F.apply_params(idx.index, idx.params)
        removed = before - len(idx)
    else:
        removed = F.remove(idx.index, ids)
    if removed != len(ids):
        raise IndexError_(f"faiss removed {removed} of {len(ids)} tiles; rebuild the index")
    idx._meta.drop(ids)
    for sid in slides:
        idx.manifest.get("slides", {}).pop(sid, None)
    idx._changed()
    log.info("removed %d tiles of %d slide(s)", removed, len(slides))
    return removed
