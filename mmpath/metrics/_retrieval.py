"""Retrieval metrics: top-k accuracy, majority vote at k (mMV@k), recall of approximate search.

Conventions follow the histopathology retrieval papers: a query "hits" at k when any of its
top-k results carries its label (top-k accuracy, as in Yottixel/RetCCL); mMV@k is the accuracy
of predicting the query's label by majority vote of its top-k results (SISH, RetCCL), ties
broken in favour of the label whose best result ranks highest. Recall@k (faiss'
"k-recall@k") is the mean fraction of the exact top-k ids that the approximate top-k
recovers. :func:`mmpath.index.evaluate` scores an index with these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmpath.errors import DataError

__all__ = ["top_k_accuracy", "majority_vote", "majority_vote_at_k", "recall_at_k"]


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
