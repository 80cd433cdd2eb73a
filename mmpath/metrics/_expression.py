"""Expression metrics: per-gene correlations (HEST-Benchmark: Pearson r per gene, mean over genes).

Vectorised over genes; equal to ``scipy.stats.pearsonr`` / ``spearmanr`` column by column
(tests check this). A gene whose truth or prediction is constant on the evaluated spots has
no defined correlation: it scores 0 (a constant prediction such as the mean baseline carries
no ranking information), and :func:`per_gene_scores` reports it in ``constant``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

__all__ = ["pearson_per_gene", "spearman_per_gene", "per_gene_scores"]


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``y_pred`` against ``y_true`` (0 where either is constant).

    Example
    -------
    >>> r = pearson_per_gene(Y_test, model_pred)
    >>> float(r.mean())
    """
    a = np.asarray(y_true, np.float64)
    b = np.asarray(y_pred, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"y_true and y_pred must be equal 2-d shapes, got {a.shape}, {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    na = np.sqrt((a * a).sum(axis=0))
    nb = np.sqrt((b * b).sum(axis=0))
    denom = na * nb
    # Relative threshold: float round-off leaves ~1e-16 of a constant column.
    const = (na <= 1e-12 * (1 + np.abs(y_true).max(initial=0))) | (
        nb <= 1e-12 * (1 + np.abs(y_pred).max(initial=0))
    )
    r = np.where(const, 0.0, (a * b).sum(axis=0) / np.where(denom > 0, denom, 1.0))
    return np.clip(r, -1.0, 1.0)


def spearman_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Spearman rho of each column (Pearson r of average ranks, as scipy defines it)."""
    return pearson_per_gene(rankdata(y_true, axis=0), rankdata(y_pred, axis=0))


def per_gene_scores(y_true: np.ndarray, y_pred: np.ndarray, genes) -> pd.DataFrame:
    """One row per gene: ``pearson``, ``spearman``, ``mse`` and ``constant`` (no variance)."""
    a = np.asarray(y_true, np.float64)
    b = np.asarray(y_pred, np.float64)
    return pd.DataFrame(
        {
            "gene": list(genes),
            "pearson": pearson_per_gene(a, b),
            "spearman": spearman_per_gene(a, b),
            "mse": ((a - b) ** 2).mean(axis=0),
            "constant": (np.ptp(a, axis=0) == 0) | (np.ptp(b, axis=0) == 0),
        }
    )
