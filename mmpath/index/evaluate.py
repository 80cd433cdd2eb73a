"""Retrieval evaluation of an index: top-k accuracy and mMV@k of labelled query tiles.

The array metrics (:func:`top_k_accuracy`, :func:`majority_vote_at_k`, :func:`recall_at_k`)
live in :mod:`mmpath.metrics` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmpath.errors import DataError
from mmpath.metrics._retrieval import (
    majority_vote,
    majority_vote_at_k,
    recall_at_k,
    top_k_accuracy,
)

__all__ = ["top_k_accuracy", "majority_vote", "majority_vote_at_k", "recall_at_k", "evaluate"]


def evaluate(
    index,
    queries,
    *,
    label: str,
    k: Sequence[int] = (1, 5, 10),
    drop_neighbours: float | None = float("inf"),
) -> dict[str, float]:
    """Top-k accuracy and mMV@k of an index for labelled query tiles.

    Parameters
    ----------
    index
        A :class:`~mmpath.index.TileIndex` whose metadata has the ``label`` column.
    queries
        A tile table embedded with the index's key and with ``obs[label]``.
    label
        The label column (in the index metadata and the queries' obs).
    k
        Cut-offs to report.
    drop_neighbours
        As in :meth:`TileIndex.search`; the default (infinite radius) leaves the query's own
        slide out, so a slide cannot find itself (leave-one-slide-out).

    Returns
    -------
    ``{"top1_acc": ..., "mMV@1": ..., ...}``.

    Example
    -------
    >>> mm.index.evaluate(idx, tiles, label="tissue_type", k=(1, 5))
    """
    if label not in index.columns or label not in queries.obs:
        raise DataError(f"label column {label!r} must be in the index metadata and the queries")
    kmax = max(k)
    hits = index.search_image(queries, k=kmax, drop_neighbours=drop_neighbours)
    table = hits.pivot(index="query", columns="rank", values=label)
    table = table.reindex(index=range(queries.n_obs), columns=range(1, kmax + 1))
    hit_labels = table.astype(object).where(table.notna(), None).to_numpy()
    qlab = queries.obs[label].astype(object).to_numpy()
    out: dict[str, float] = {}
    for kk in k:
        out[f"top{kk}_acc"] = top_k_accuracy(hit_labels, qlab, kk)
        out[f"mMV@{kk}"] = majority_vote_at_k(hit_labels, qlab, kk)
    out["n_queries"] = float(queries.n_obs)
    return out
