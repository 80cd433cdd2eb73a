"""Tile anomaly scores: a VAE trained on normal tiles, and a kNN-on-embeddings baseline.

* :func:`anomaly` runs a VAE head (``mmpath train anomaly``) over a tile table. The default
  ``obs["<key>_score"]`` is complexity-aware (the ``typicality`` of
  :mod:`mmpath.models.heads._complexity`): raw reconstruction error mostly measures how busy
  a tile is, so on real stroma it ranked smoother tumour nuclei *below* normal ones (AUROC
  0.07). The raw scores stay available as ``<key>_recon_error`` and ``<key>_latent_nll``, with
  ``<key>_complexity`` (PNG bits/px) and ``<key>_corrected`` (error minus what normal tiles of
  that complexity get); per-pixel error maps can be written to a file.
  ``mm.pl.tiles(tiles, color="anomaly_score")`` draws the heatmap over the slide.
* :func:`anomaly_knn` is the PatchCore-style baseline (Roth et al. 2022): the distance of each
  tile's embedding to its ``k`` nearest neighbours in a memory bank of normal tiles (faiss,
  exact L2), optionally subsampled by PatchCore's greedy k-centre coreset. Bank members are
  scored leave-one-out (their own entry is skipped). On foundation-model features this is a
  strong baseline.
* :func:`~mmpath.metrics.anomaly_metrics` evaluates scores against labels (AUROC, AUPRC).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.io._atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["anomaly", "anomaly_knn", "kcenter_coreset"]


def anomaly(
    adata,
    model: Any,
    *,
    slide=None,
    key_added: str = K.ANOMALY,
    batch_size: int = 64,
    device: str = "cpu",
    num_workers: int = 0,
    error_maps: str | os.PathLike[str] | None = None,
    remap=None,
) -> None:
    """Score every tile with a VAE trained on normal tiles (in place).

    Parameters
    ----------
    adata
        A tile table.
    model
        An anomaly model folder (``mmpath train anomaly``) or a ``TrainedHead``.
    slide
        The open slide (required for in-memory slides); reopened from provenance otherwise.
    key_added
        Writes ``obs["<key>_score"]`` (the default, complexity-aware score: Mahalanobis
        distance of (log recon error, PNG complexity) from the normal training tiles),
        ``obs["<key>_recon_error"]``, ``obs["<key>_latent_nll"]``,
        ``obs["<key>_complexity"]`` and ``obs["<key>_corrected"]``. A model folder written
        before the calibration existed has no complexity fit: then ``<key>_score`` is the raw
        reconstruction error and a warning says to retrain.
    batch_size, device, num_workers
        Inference batch, torch device and tile-reading processes.
    error_maps
        Write the per-pixel error maps to this ``.npz`` (``maps`` (n, S, S) float16,
        ``obs_names``).
    remap
        Slide path remap for moved archives (see :func:`mmpath.io.open_slide_from`).

    Example
    -------
    >>> mm.tl.anomaly(tiles, "runs/vae1")
    >>> mm.pl.tiles(tiles, color="anomaly_score")
    """
    import torch.nn.functional as F

    from mmpath.io import iter_tiles
    from mmpath.models.heads._complexity import ComplexityCalibration, vae_scores
    from mmpath.models.transform import scale, to_chw
    from mmpath.tl.segment import load_head

    head = load_head(model, "anomaly")
    vae = head.model.to(device).eval()
    S = int(vae.config.image_size)
    n = adata.n_obs
    cal_d = (head.extra or {}).get("complexity")
    cal = ComplexityCalibration.from_dict(cal_d) if cal_d else None
    if cal is None:
        log.warning(
            "this anomaly model has no complexity calibration (trained before it existed): "
            "%s_score is the raw reconstruction error, which tracks how busy a tile is; "
            "retrain it with `mmpath train anomaly`",
            key_added,
        )
    names = ["recon_error", "latent_nll", "complexity"] + (
        ["corrected", "typicality"] if cal is not None else []
    )
    cols = {k: np.zeros(n, np.float32) for k in names}
    maps = np.zeros((n, S, S), np.float16) if error_maps is not None else None
    for idx, batch in iter_tiles(
        adata, batch_size=batch_size, slide=slide, num_workers=num_workers, remap=remap
    ):
        x = scale(to_chw(batch, device=device))  # the VAE reads [0, 1] images
        if x.shape[-1] != S:
            x = F.interpolate(x, size=(S, S), mode="bilinear", antialias=True)
        res = vae_scores(vae, x, cal)
        for k in names:
            cols[k][idx] = res[k]
        if maps is not None:
            maps[idx] = res["error_map"].cpu().numpy().astype(np.float16)
    default = "typicality" if cal is not None else "recon_error"
    adata.obs[f"{key_added}_score"] = cols[default]
    for k in names:
        if k != "typicality":
            adata.obs[f"{key_added}_{k}"] = cols[k]
    record = {
        "method": "vae",
        "model": head.path or head.name,
        "image_size": S,
        "score": default,
    }
    if maps is not None:
        path = Path(error_maps)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, maps=maps, obs_names=np.asarray(adata.obs_names, str))
        record["error_maps"] = str(path)
    _prov.record_run(adata, "anomaly", key_added, record)


def _knn_distance(
    bank: np.ndarray,
    bank_group: np.ndarray,
    queries: np.ndarray,
    query_group: np.ndarray,
    k: int,
    *,
    extra: int = 0,
) -> np.ndarray:
    """Mean Euclidean distance of each query to its ``k`` nearest bank vectors (exact, faiss
    ``IndexFlatL2``), skipping bank vectors of the query's own group (leave-one-out: a tile's
    own bank entry, or its own patches); ``extra`` = how many of those a query can meet.
    Used by :func:`anomaly_knn` and PatchCore."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, np.float32))
    dist, nn = index.search(np.ascontiguousarray(queries, np.float32), min(len(bank), k + extra))
    same = np.asarray(bank_group)[nn] == np.asarray(query_group)[:, None]
    order = np.argsort(same, axis=1, kind="stable")  # other groups first, nearest first
    d = np.take_along_axis(dist, order, 1)[:, :k]
    return np.sqrt(np.maximum(d, 0)).mean(1).astype(np.float32)


def kcenter_coreset(x: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` rows chosen by greedy k-centre (PatchCore's coreset subsampling).

    Example
    -------
    >>> keep = kcenter_coreset(bank, 1000)
    """
    x = np.asarray(x, np.float32)
    n = int(min(max(1, n), len(x)))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(x)))]
    dist = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = np.minimum(dist, ((x - x[i]) ** 2).sum(1))
    return np.asarray(chosen, np.int64)


def _normal_mask(adata, normal: Any) -> np.ndarray:
    if normal is None:
        return np.ones(adata.n_obs, bool)
    if isinstance(normal, str):
        if normal not in adata.obs:
            raise DataError(f"obs has no column {normal!r} marking normal tiles")
        col = adata.obs[normal]
        values = set(np.unique(col.astype(str)))
        if not values <= {"True", "False", "0", "1"}:
            raise DataError(f"obs[{normal!r}] must be boolean (True = normal tile)")
        return col.astype(str).isin(["True", "1"]).to_numpy()
    mask = np.asarray(normal)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        raise DataError(f"normal= must be an obs column name or a bool array of {adata.n_obs}")
    return mask


def anomaly_knn(
    adata,
    *,
    use_rep: str,
    normal: Any = None,
    k: int = 1,
    coreset: float | None = None,
    key_added: str = K.ANOMALY_KNN,
) -> None:
    """PatchCore-style kNN anomaly score: distance to the bank of normal tiles (in place).

    Parameters
    ----------
    adata
        A tile table with embeddings in ``obsm[use_rep]``.
    use_rep
        The embedding (e.g. ``"X_uni"``).
    normal
        Which tiles form the memory bank: an obs column (True = normal) or a bool array;
        ``None`` uses every tile (then a tile's score says how isolated it is).
    k
        Neighbours averaged (PatchCore uses 1).
    coreset
        Keep this fraction of the bank by greedy k-centre (``None`` keeps all).
    key_added
        Writes ``obs["<key>_score"]`` (mean Euclidean distance to the k nearest bank tiles).

    Example
    -------
    >>> mm.tl.anomaly_knn(tiles, use_rep="X_uni", normal="is_normal")
    >>> mm.metrics.anomaly_metrics(tiles.obs["anomaly_knn_score"], ~tiles.obs["is_normal"])
    """

    if use_rep not in adata.obsm:
        raise DataError(
            f"obsm has no {use_rep!r}; run mm.tl.embed first (obsm keys: "
            f"{', '.join(adata.obsm.keys()) or 'none'})"
        )
    X = np.ascontiguousarray(np.asarray(adata.obsm[use_rep], np.float32))
    if X.ndim != 2 or not np.isfinite(X).all():
        raise DataError(
            f"obsm[{use_rep!r}] has NaN/inf values (or is not 2-D); re-embed or drop those tiles"
        )
    is_bank = _normal_mask(adata, normal)
    bank_idx = np.flatnonzero(is_bank)
    if coreset is not None:
        if not 0 < coreset <= 1:
            raise DataError(f"coreset must be a fraction in (0, 1], got {coreset}")
        bank_idx = bank_idx[kcenter_coreset(X[bank_idx], int(np.ceil(coreset * len(bank_idx))))]
    if len(bank_idx) <= k:
        raise DataError(f"the normal bank has {len(bank_idx)} tiles; need more than k={k}")
    # each tile's own bank entry is skipped (leave-one-out)
    scores = _knn_distance(X[bank_idx], bank_idx, X, np.arange(adata.n_obs), k, extra=1)
    adata.obs[f"{key_added}_score"] = scores
    record = {
        "method": "knn",
        "use_rep": use_rep,
        "k": int(k),
        "bank_size": int(len(bank_idx)),
        "coreset": coreset,
    }
    _prov.record_run(adata, "anomaly", key_added, record)
