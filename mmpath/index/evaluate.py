"""Retrieval evaluation: top-k accuracy, majority vote at k (mMV@k), recall of approximate search.

Conventions follow the histopathology retrieval papers: a query "hits" at k when any of its
top-k results carries its label (top-k accuracy, as in Yottixel/RetCCL); mMV@k is the accuracy
of predicting the query's label by majority vote of its top-k results (SISH, RetCCL), ties
broken in favour of the label whose best result ranks highest. Recall@k (faiss'
"k-recall@k") is the mean fraction of the exact top-k ids that the approximate top-k
recovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmpath.errors import DataError

__all__ = ["top_k_accuracy", "majority_vote", "majority_vote_at_k", "recall_at_k", "evaluate"]


def _labels(hit_labels, query_labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hit_labels, dtype=object)
    query = np.asarray(query_labels, dtype=object)
    if hits.ndim != 2 or len(hits) != len(query):
        raise DataError(
            f"hit_labels must be (n_queries, k) and query_labels (n_queries,), got "
            f"{hits.shape} and {query.shape}"
        )
    if not 1 <= k <= hits.shape[1]:
        raise DataError(f"k={k} must be between 1 and the {hits.shape[1]} hits per query")
    return hits[:, :k], query


def top_k_accuracy(hit_labels, query_labels, k: int) -> float:
    """Fraction of queries with their own label among their top-``k`` hits.

    Parameters
    ----------
    hit_labels
        ``(n_queries, >= k)`` labels of the hits, best first (``None`` for missing hits).
    query_labels
        ``(n_queries,)`` labels of the queries.
    k
        Hits considered.

    Example
    -------
    >>> top_k_accuracy([["a", "b"], ["b", "b"]], ["b", "a"], k=2)
    0.5
    """
    hits, query = _labels(hit_labels, query_labels, k)
    return (
        float(np.mean([q in set(h) for h, q in zip(hits, query, strict=False)]))
        if len(query)
        else 0.0
    )


def majority_vote(labels: Sequence[Any]) -> Any:
    """The most frequent label; a tie goes to the label seen first (the better-ranked hit).

    Example
    -------
    >>> majority_vote(["b", "a", "a", "b", "c"])
    'b'
    """
    seen = [
        lab for lab in labels if lab is not None and not (isinstance(lab, float) and np.isnan(lab))
    ]
    if not seen:
        return None
    counts: dict[Any, int] = {}
    for lab in seen:
        counts[lab] = counts.get(lab, 0) + 1
    best = max(counts.values())
    return next(lab for lab in seen if counts[lab] == best)


def majority_vote_at_k(hit_labels, query_labels, k: int) -> float:
    """mMV@k: accuracy of the majority label of the top-``k`` hits.

    Example
    -------
    >>> majority_vote_at_k([["a", "b", "b"], ["a", "a", "b"]], ["b", "b"], k=3)
    0.5
    """
    hits, query = _labels(hit_labels, query_labels, k)
    if not len(query):
        return 0.0
    return float(np.mean([majority_vote(list(h)) == q for h, q in zip(hits, query, strict=False)]))


def recall_at_k(I_approx, I_exact, k: int | None = None) -> float:
    """k-recall@k: mean fraction of the exact top-``k`` ids found in the approximate top-``k``.

    Example
    -------
    >>> recall_at_k([[1, 2, 3]], [[1, 3, 4]])
    0.6666666666666666
    """
    a = np.asarray(I_approx)
    e = np.asarray(I_exact)
    if a.ndim != 2 or e.ndim != 2 or len(a) != len(e):
        raise DataError(f"id arrays must both be (n_queries, k), got {a.shape} and {e.shape}")
    k = min(a.shape[1], e.shape[1]) if k is None else int(k)
    if not len(a):
        return 0.0
    found = [
        len(np.intersect1d(x[:k][x[:k] >= 0], y[:k][y[:k] >= 0]))
        for x, y in zip(a, e, strict=False)
    ]
    return float(np.sum(found) / (len(a) * k))


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
