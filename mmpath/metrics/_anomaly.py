"""Anomaly metrics: AUROC and AUPRC of anomaly scores against binary labels (sklearn)."""

from __future__ import annotations

import numpy as np

from mmpath.errors import DataError

__all__ = ["anomaly_metrics", "binary_labels"]


def binary_labels(labels) -> np.ndarray:
    """``labels`` as a boolean array (True = anomalous), checked: 0/1 or boolean values, and
    both classes present (AUROC needs normal and anomalous tiles)."""
    y = np.asarray(labels).ravel()
    if y.dtype != bool:
        vals = set(np.unique(y).tolist())
        if not vals <= {0, 1}:
            raise DataError(f"labels must be 0/1 or boolean, got values {sorted(vals)[:5]}")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise DataError("AUROC needs both normal and anomalous tiles among the labels")
    return y


def anomaly_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision) of anomaly ``scores`` against binary ``labels``.

    ``labels`` are 1 (or True) for anomalous tiles; higher scores must mean more anomalous.

    Example
    -------
    >>> mm.metrics.anomaly_metrics(tiles.obs["anomaly_score"], tiles.obs["is_tumour"])
    {'auroc': 0.93, 'auprc': 0.81, 'n': 500, 'n_anomalous': 60}
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = binary_labels(labels)
    if s.shape != y.shape:
        raise DataError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise DataError("anomaly scores contain NaN or infinite values")
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "n": int(y.size),
        "n_anomalous": int(y.sum()),
    }
