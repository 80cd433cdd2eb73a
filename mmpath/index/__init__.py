"""Retrieval: a faiss index over tile embeddings (image->image, text->image, slide search).

``import mmpath`` stays light: faiss is imported when an index is built or loaded.

Example
-------
>>> idx = mm.index.build(tiles, use_rep="X_conch_proj")
>>> hits = idx.search_text("necrosis", k=20, encoder="conch")
>>> D, I = idx.search_vectors(tiles.obsm["X_conch_proj"][:5], k=20)
>>> idx.save("archive.idx"); idx = mm.index.load("archive.idx")
"""

from __future__ import annotations

from mmpath.index._build import add, build, remove
from mmpath.index._filter import FILTER_HELP, check_filter, filter_mask
from mmpath.index._store import load, read_manifest
from mmpath.index.evaluate import (
    evaluate,
    majority_vote,
    majority_vote_at_k,
    recall_at_k,
    top_k_accuracy,
)
from mmpath.index.tileindex import TileIndex


def choose_factory(n: int, dim: int) -> str:
    """The faiss factory string :func:`build` picks for ``n`` vectors of ``dim``.

    Example
    -------
    >>> mm.index.choose_factory(10_000_000, 512)
    'IVF4096,PQ128x4fs,RFlat'
    """
    from mmpath.index._faiss import choose

    return choose(int(n), int(dim)).factory


__all__ = [
    "TileIndex",
    "build",
    "add",
    "remove",
    "load",
    "read_manifest",
    "filter_mask",
    "check_filter",
    "FILTER_HELP",
    "choose_factory",
    "evaluate",
    "top_k_accuracy",
    "majority_vote",
    "majority_vote_at_k",
    "recall_at_k",
]
