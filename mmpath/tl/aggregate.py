"""Slide-level embeddings: pool a tile table's embeddings into a slide table."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["aggregate"]

METHODS = ("mean", "max", "median")


def default_rep(adata) -> str:
    """The table's embedding when it holds exactly one (``use_rep=None``)."""
    keys = [k for k in _prov.plain(_prov.root(adata).get(K.UNS_EMBEDDINGS, {})) if k in adata.obsm]
    if len(keys) != 1:
        found = ", ".join(keys) if keys else "none"
        raise DataError(
            f"pass use_rep= to choose an embedding (found: {found}); run mm.tl.embed first"
            if not keys
            else f"the table holds several embeddings ({found}); pass use_rep="
        )
    return keys[0]


def aggregate(
    adata, *, use_rep: str | None = None, method: str = "mean", only_ok: bool = True
) -> AnnData:
    """Pool tile embeddings into one row per slide (a slide table).

    Parameters
    ----------
    adata
        An embedded tile table (one slide or a cohort).
    use_rep
        obsm key to pool; defaults to the table's only embedding.
    method
        ``"mean"`` (the baseline), ``"max"`` or ``"median"``.
    only_ok
        Leave out tiles marked ``obs["tile_ok"] == False`` (damaged regions).

    Returns
    -------
    A new AnnData with one row per ``slide_id``: the pooled vectors in ``X`` and
    ``obsm[use_rep]``, ``obs["n_tiles"]``, every obs column that is constant within each
    slide (slide-level labels), and the provenance of the slides and the embedding.

    Example
    -------
    >>> slides = mm.tl.aggregate(cohort, use_rep="X_uni")
    >>> slides.obs["n_tiles"]
    """
    import anndata as ad

    if method not in METHODS:
        raise DataError(f"method must be one of {METHODS}, got {method!r}")
    use_rep = use_rep or default_rep(adata)
    if use_rep not in adata.obsm:
        raise DataError(
            f"obsm[{use_rep!r}] does not exist (obsm keys: {list(adata.obsm)}); run mm.tl.embed"
        )
    ids = _prov.slide_ids(adata)
    emb = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    keep = np.ones(adata.n_obs, bool)
    if only_ok and K.TILE_OK in adata.obs:
        keep = adata.obs[K.TILE_OK].to_numpy(bool)
    col = np.asarray(adata.obs[K.SLIDE_ID].astype(str))
    pool = {"mean": np.mean, "max": np.max, "median": np.median}[method]
    rows, counts = [], []
    for sid in ids:
        sel = (col == sid) & keep
        counts.append(int(sel.sum()))
        if sel.any():
            rows.append(pool(emb[sel], axis=0))
        else:
            log.warning("slide %r has no usable tiles; its pooled embedding is NaN", sid)
            rows.append(np.full(emb.shape[1], np.nan, np.float32))
    pooled = np.stack(rows).astype(np.float32) if rows else np.zeros((0, emb.shape[1]), np.float32)

    obs = pd.DataFrame(index=pd.Index(ids, name=None))
    obs[K.SLIDE_ID] = pd.Categorical(ids)
    obs[K.N_TILES] = np.asarray(counts, np.int64)
    by_slide = adata.obs.groupby(col, observed=True, sort=False)
    for name in adata.obs.columns:
        if name in (K.SLIDE_ID, K.X, K.Y, K.TILE_OK):
            continue
        if (by_slide[name].nunique(dropna=False) <= 1).all():
            obs[name] = by_slide[name].first().reindex(ids).to_numpy()

    out = ad.AnnData(X=pooled, obs=obs)
    out.obsm[use_rep] = pooled.copy()
    src = _prov.plain(_prov.root(adata))
    root = _prov.root(out)
    root[K.UNS_SLIDES] = {sid: src.get(K.UNS_SLIDES, {}).get(sid, {}) for sid in ids}
    emb_prov = src.get(K.UNS_EMBEDDINGS, {}).get(use_rep)
    root[K.UNS_EMBEDDINGS] = {use_rep: copy.deepcopy(emb_prov)} if emb_prov else {}
    root[K.UNS_AGGREGATE] = {"use_rep": use_rep, "method": method, "only_ok": bool(only_ok)}
    return out
