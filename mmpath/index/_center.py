"""Centring (and optional whitening) of embeddings before cosine search, learnt at build time.

Many encoders put every embedding in a narrow cone: the demo ViT's cosine similarities all sit
near 0.99, so nearest neighbours barely separate (anisotropy; Ethayarajh 2019, and common in
foundation models). Subtracting the mean of the indexed vectors (and optionally whitening them,
Su et al. 2021 "Whitening sentence representations") spreads the cone. The statistics are
learnt once, on the L2-normalised vectors given to :func:`mmpath.index.build`, stored in the
manifest (``manifest["center"]``) and applied to every vector added later and every query, so
stored and query vectors always live in the same space. Vectors added later do not update the
statistics (they would silently move every stored vector). A build from table files learns them
in one streamed pass, a table at a time (:class:`Moments`), before training.

``apply`` maps a unit vector ``x`` to ``normalise((x - mean) @ W)`` with ``W`` the identity
(centring only) or the ZCA-style whitening ``V diag(1 / sqrt(s + eps)) V^T`` of the centred
covariance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmpath.errors import IndexError_

__all__ = ["fit", "apply", "Moments"]


class Moments:
    """Exact mean (and scatter matrix) of vectors seen block by block, in float64.

    Blocks are merged with the pairwise update of Chan, Golub & LeVeque (1979): each block's
    own mean and centred scatter, then a correction for the shift between means. So a build
    streamed table by table learns the statistics of all its vectors without holding them,
    equal to the one-shot computation up to float64 rounding (tested).
    """

    def __init__(self, *, scatter: bool = False) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None  # sum of (x - mean)(x - mean)^T
        self.scatter = scatter

    def update(self, block: np.ndarray) -> Moments:
        x = np.asarray(block, np.float64)
        if not len(x):
            return self
        nb, mb = len(x), x.mean(0)
        m2b = None
        if self.scatter:
            xc = x - mb
            m2b = xc.T @ xc
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return self
        n = self.n + nb
        delta = mb - self.mean
        if self.scatter:
            self.m2 = self.m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n
        return self

    def spec(self, *, whiten: bool = False, eps: float = 1e-3) -> dict[str, Any]:
        """The JSON-able centring (+ whitening) statistics (see :func:`fit`)."""
        if self.n < 2:
            raise IndexError_(
                "centring needs at least 2 vectors to learn a mean; build with center=False"
            )
        spec: dict[str, Any] = {
            "mean": self.mean.astype(np.float32).tolist(),
            "whiten": None,
            "n": int(self.n),
        }
        if whiten:
            cov = self.m2 / (self.n - 1)
            s, v = np.linalg.eigh(cov)
            w = (v * (1.0 / np.sqrt(np.maximum(s, 0) + eps * s.max()))) @ v.T
            spec["whiten"] = w.astype(np.float32).tolist()
            spec["eps"] = eps
        return spec


def fit(vectors: np.ndarray, *, whiten: bool = False, eps: float = 1e-3) -> dict[str, Any]:
    """Centring (+ whitening) statistics of L2-normalised ``vectors``, JSON-able.

    Example
    -------
    >>> spec = fit(unit_vectors, whiten=False)
    """
    return Moments(scatter=whiten).update(vectors).spec(whiten=whiten, eps=eps)


def apply(x: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """Centre (+ whiten) unit vectors ``(n, d)`` and L2-normalise them again (float32)."""
    if not spec:
        return x
    out = np.asarray(x, np.float32) - np.asarray(spec["mean"], np.float32)
    if spec.get("whiten") is not None:
        out = out @ np.asarray(spec["whiten"], np.float32)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norm, 1e-12), dtype=np.float32)
