"""``mmpath.index.build``: tile tables -> a trained, filled :class:`TileIndex`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.errors import IndexError_
from mmpath.index import _center
from mmpath.index import _faiss as F
from mmpath.index import _tables as T
from mmpath.index.tileindex import TileIndex

log = logging.getLogger(__name__)

__all__ = ["build"]

NORMALISATION = "l2"  # stored and query vectors are unit length: inner product = cosine


def build(
    adata,
    *,
    use_rep: str,
    factory: str | None = None,
    params: Mapping[str, Any] | None = None,
    gpu: bool | None = None,
    seed: int = 0,
    center: bool = False,
    whiten: bool = False,
) -> TileIndex:
    """Build a search index over the tiles of one or more tile tables.

    Parameters
    ----------
    adata
        A tile table, or a list of them (e.g. one per slide).
    use_rep
        The obsm key to index: ``X_<slug>`` for image-to-image search, ``X_<slug>_proj``
        (the joint image-text space) when text queries are wanted.
    factory
        A faiss factory string (``"Flat"``, ``"HNSW32,Flat"``, ``"IVF1024,PQ128x4fs,RFlat"``...);
        ``None`` picks one by size (see :func:`mmpath.index.choose_factory`).
    params
        Query-time defaults (``nprobe``, ``efSearch``, ``k_factor``) overriding the factory's.
    gpu
        Search on the GPU: ``None`` when faiss-gpu and CUDA exist, ``True`` requires it,
        ``False`` never.
    seed
        Seed of the training sample.
    center, whiten
        Subtract the mean of the indexed (unit) vectors, and optionally whiten them, before
        cosine search; the statistics are learnt here, stored in the manifest and applied to
        every later :meth:`~TileIndex.add` and every query (:mod:`mmpath.index._center`).
        Off by default: it helps anisotropic embeddings (mMV@5 measured in the README) but
        changes what "similar" means for text queries in a joint space.

    Returns
    -------
    A :class:`TileIndex`.

    Example
    -------
    >>> idx = mm.index.build(tiles, use_rep="X_conch_proj")
    >>> hits = idx.search_text("necrosis", k=20, encoder="conch")
    """
    tables = T.as_tables(adata)
    got = T.collect(tables, use_rep, 0)
    n = len(got.vectors)
    if n == 0:
        raise IndexError_(
            "no tiles to index (the tables are empty or every tile is marked damaged)"
        )
    dim = int(got.vectors.shape[1])
    if whiten and not center:
        raise IndexError_("whiten=True needs center=True (whitening is of centred vectors)")
    centring = _center.fit(got.vectors, whiten=whiten) if center else None
    vectors = _center.apply(got.vectors, centring)
    plan = F.choose(n, dim, factory)
    index = F.create(plan.factory, dim)
    F.train(index, vectors, seed=seed)
    index.add_with_ids(vectors, got.meta.index.to_numpy(np.int64))
    manifest = {
        "encoder": got.embedding.get("encoder"),
        "embedding_key": use_rep,
        "embedding": got.embedding,
        "dim": dim,
        "normalisation": NORMALISATION,
        "metric": "inner_product",
        "factory": plan.factory,
        "params": {**plan.params, **F.check_params(params)},
        "next_id": n,
        "slides": got.slides,
        "mmpath_version": __version__,
    }
    if centring is not None:
        manifest["center"] = centring
    log.info(
        "indexed %d tiles of %d slide(s) with %s", n, got.meta[K.SLIDE_ID].nunique(), plan.factory
    )
    return TileIndex(index, got.meta, manifest, gpu=gpu)
