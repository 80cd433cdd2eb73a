"""Turning faiss ``(D, nbr)`` into tables: tile hits, neighbour dropping, slide votes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.index import _tables as T

HIT_COLUMNS = ("query", "rank", "score", T.TILE_ID)


def hits_frame(
    D: np.ndarray, nbr: np.ndarray, meta, *, keep: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per (query, rank) with the hit's metadata; ``-1`` ids are left out.

    ``meta`` is the index's :class:`~mmpath.index._meta.MetaStore`: only the hits' rows are read.

    ``keep`` (bool, like ``nbr``) selects hits; ranks count the kept hits from 1.
    """
    valid = nbr >= 0 if keep is None else keep & (nbr >= 0)
    q, col = np.nonzero(valid)
    rank = np.zeros_like(q)
    if len(q):
        # rank within each query = position among its kept hits
        starts = np.r_[0, np.flatnonzero(np.diff(q)) + 1]
        counts = np.diff(np.r_[starts, len(q)])
        rank = np.arange(len(q)) - np.repeat(starts, counts)
    ids = nbr[q, col]
    out = pd.DataFrame(
        {
            "query": q.astype(np.int64),
            "rank": (rank + 1).astype(np.int64),
            "score": D[q, col].astype(np.float32),
            T.TILE_ID: ids.astype(np.int64),
        }
    )
    info = meta.rows(ids).reset_index(drop=True)
    return pd.concat([out, info], axis=1)


def drop_neighbours(
    D,
    nbr,
    meta,
    query_tiles: pd.DataFrame | None,
    radius: float | None,
    min_distance: float | None,
    k: int,
) -> tuple[np.ndarray, bool]:
    """Mask of hits to keep (at most ``k`` per query) and whether a query got fewer than ``k``.

    A hit is dropped when it lies on the query's slide within ``radius`` of the query tile
    (an infinite radius drops the query's whole slide), or on the slide of a better kept hit
    within ``min_distance`` of it.
    """
    r2 = _sq(radius)
    m2 = _sq(min_distance)
    keep = np.zeros(nbr.shape, bool)
    valid = nbr >= 0
    short = False
    qs = qx = qy = None
    if r2 is not None and query_tiles is not None and K.SLIDE_ID in query_tiles:
        qs = query_tiles[K.SLIDE_ID].astype(str).to_numpy()
        qx = query_tiles[K.X].to_numpy(float)
        qy = query_tiles[K.Y].to_numpy(float)
    for i in range(nbr.shape[0]):
        ids = nbr[i][valid[i]]
        s = meta.slides_of(ids)
        x, y = meta.xy(ids)
        ok = np.ones(len(ids), bool)
        if qs is not None:
            ok &= ~((s == qs[i]) & ((x - qx[i]) ** 2 + (y - qy[i]) ** 2 <= r2))
        kept: list[int] = []
        for j in np.flatnonzero(ok):
            if len(kept) == k:
                break
            if kept and m2 is not None:
                kk = np.asarray(kept)
                near = (s[kk] == s[j]) & ((x[kk] - x[j]) ** 2 + (y[kk] - y[j]) ** 2 <= m2)
                if near.any():
                    continue
            kept.append(j)
        keep[i, np.flatnonzero(valid[i])[kept]] = True
        short |= len(kept) < k
    return keep, short


def _sq(r: float | None) -> float | None:
    if r is None:
        return None
    return float(r) ** 2 if math.isfinite(r) else math.inf


def constant_per_slide(meta: pd.DataFrame) -> pd.DataFrame:
    """Metadata columns with one value per slide (slide labels), indexed by slide id."""
    sid = meta[K.SLIDE_ID].astype(str)
    skip = {T.OBS_NAME, K.SLIDE_ID, K.X, K.Y, K.TISSUE_FRAC, K.TILE_OK}
    cols = [c for c in meta.columns if c not in skip]
    if not cols or len(meta) == 0:
        return pd.DataFrame(index=pd.Index(sorted(set(sid)), name=K.SLIDE_ID))
    grouped = meta[cols].groupby(sid.to_numpy(), sort=True)
    nunique = grouped.nunique(dropna=False)
    const = [c for c in cols if (nunique[c] <= 1).all()]
    out = grouped[const].first() if const else pd.DataFrame(index=nunique.index)
    out.index.name = K.SLIDE_ID
    return out


def slide_votes(D, nbr, meta, slide_meta: pd.DataFrame, k: int) -> pd.DataFrame:
    """Rank slides by how many query tiles hit them (one vote per query tile and slide)."""
    valid = nbr >= 0
    q, col = np.nonzero(valid)
    if len(q) == 0:
        return pd.DataFrame(
            columns=[
                "rank",
                K.SLIDE_ID,
                "votes",
                "vote_frac",
                "median_score",
                "best_score",
                "n_hits",
            ]
        )
    hits = pd.DataFrame(
        {
            "q": q,
            K.SLIDE_ID: meta.slides_of(nbr[q, col]).astype(str),
            "score": D[q, col].astype(float),
        }
    )
    per_q = hits.groupby(["q", K.SLIDE_ID], sort=False)["score"].agg(["max", "size"])
    per_q = per_q.reset_index()
    agg = per_q.groupby(K.SLIDE_ID).agg(
        votes=("q", "size"),
        median_score=("max", "median"),
        best_score=("max", "max"),
        n_hits=("size", "sum"),
    )
    agg["vote_frac"] = agg["votes"] / nbr.shape[0]
    agg = agg.sort_values(["votes", "median_score"], ascending=False).head(k)
    agg = agg.reset_index()
    agg.insert(0, "rank", np.arange(1, len(agg) + 1))
    agg = agg[["rank", K.SLIDE_ID, "votes", "vote_frac", "median_score", "best_score", "n_hits"]]
    extra = slide_meta.reindex(agg[K.SLIDE_ID].to_numpy()).reset_index(drop=True)
    return pd.concat([agg, extra], axis=1)


def mosaic_rows(vectors: np.ndarray, m: int, *, seed: int = 0) -> np.ndarray:
    """Rows of ``m`` representative vectors: the nearest to each k-means centre."""
    from mmpath.index._faiss import faiss

    fa = faiss()
    km = fa.Kmeans(vectors.shape[1], m, niter=20, seed=seed, spherical=True, verbose=False)
    km.min_points_per_centroid = 1
    km.train(np.ascontiguousarray(vectors, np.float32))
    flat = fa.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, np.float32))
    _, rows = flat.search(km.centroids, 1)
    return np.unique(rows[:, 0])


def tiles_table(idx, hits):
    """An AnnData of hit tiles with the slide provenance needed to read their pixels."""
    import anndata as ad

    from mmpath._version import __version__

    if isinstance(hits, pd.DataFrame):
        if T.TILE_ID not in hits:
            raise DataError("hits must be a DataFrame from a TileIndex search (with tile_id)")
        ids = hits[T.TILE_ID].to_numpy(np.int64)
    else:
        ids = np.asarray(hits, np.int64).ravel()
    meta = idx._meta.rows(ids)
    obs = meta.drop(columns=[T.OBS_NAME]).copy()
    names = meta[T.OBS_NAME].astype(str).to_numpy()
    if len(set(names)) < len(names):  # the same tile hit by two queries: keep rows apart
        names = np.asarray([f"{n}#{i}" for i, n in enumerate(names)])
    obs.index = pd.Index(names)
    obs[T.TILE_ID] = ids
    slides = idx.manifest.get("slides", {})
    used = {
        str(s): slides[str(s)] for s in pd.unique(obs[K.SLIDE_ID].astype(str)) if str(s) in slides
    }
    table = ad.AnnData(obs=obs)
    table.uns[K.UNS] = {K.UNS_VERSION: __version__, K.UNS_SLIDES: used}
    return table
