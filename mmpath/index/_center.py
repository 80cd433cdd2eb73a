"""Centring (and optional whitening) of embeddings before cosine search, learnt at build time.

Many encoders put every embedding in a narrow cone: the demo ViT's cosine similarities all sit
near 0.99, so nearest neighbours barely separate (anisotropy; Ethayarajh 2019, and common in
foundation models). Subtracting the mean of the indexed vectors (and optionally whitening them,
Su et al. 2021 "Whitening sentence representations") spreads the cone. The statistics are
learnt once, on the L2-normalised vectors given to :func:`mmpath.index.build`, stored in the
manifest (``manifest["center"]``) and applied to every vector added later and every query, so
stored and query vectors always live in the same space. Vectors added later do not update the
statistics (they would silently move every stored vector).

``apply`` maps a unit vector ``x`` to ``normalise((x - mean) @ W)`` with ``W`` the identity
(centring only) or the ZCA-style whitening ``V diag(1 / sqrt(s + eps)) V^T`` of the centred
covariance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmpath.errors import IndexError_

__all__ = ["fit", "apply"]


def fit(vectors: np.ndarray, *, whiten: bool = False, eps: float = 1e-3) -> dict[str, Any]:
    """Centring (+ whitening) statistics of L2-normalised ``vectors``, JSON-able.

    Example
    -------
    >>> spec = fit(unit_vectors, whiten=False)
    """
    x = np.asarray(vectors, np.float64)
    if len(x) < 2:
        raise IndexError_(
            "centring needs at least 2 vectors to learn a mean; build with center=False"
        )
    mean = x.mean(0)
    spec: dict[str, Any] = {"mean": mean.astype(np.float32).tolist(), "whiten": None, "n": len(x)}
    if whiten:
        xc = x - mean
        cov = xc.T @ xc / (len(x) - 1)
        s, v = np.linalg.eigh(cov)
        w = (v * (1.0 / np.sqrt(np.maximum(s, 0) + eps * s.max()))) @ v.T
        spec["whiten"] = w.astype(np.float32).tolist()
        spec["eps"] = eps
    return spec


def apply(x: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """Centre (+ whiten) unit vectors ``(n, d)`` and L2-normalise them again (float32)."""
    if not spec:
        return x
    out = np.asarray(x, np.float32) - np.asarray(spec["mean"], np.float32)
    if spec.get("whiten") is not None:
        out = out @ np.asarray(spec["whiten"], np.float32)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norm, 1e-12), dtype=np.float32)
