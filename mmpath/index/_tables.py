"""From tile tables to what an index stores: normalised vectors, a metadata frame, provenance."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError, IndexError_
from mmpath.io import _prov

log = logging.getLogger(__name__)

TILE_ID = "tile_id"  # index name of the metadata frame: the 64-bit id faiss returns
OBS_NAME = "obs_name"  # the tile's row name in its table ("{slide_id}:{i}")
MPP = "mpp"  # µm/px of the tile's pixels (the tiling's effective mpp)
FIXED = (OBS_NAME, K.SLIDE_ID, K.X, K.Y)


def as_tables(tables) -> list:
    """One AnnData or a sequence of them, as a list."""
    if hasattr(tables, "obsm"):
        return [tables]
    if isinstance(tables, Sequence) and all(hasattr(t, "obsm") for t in tables):
        return list(tables)
    raise DataError("expected a tile table (AnnData) or a list of them")


def prepare(x, dim: int | None = None, *, what: str = "query vectors") -> np.ndarray:
    """``x`` as C-contiguous float32 ``(n, d)``, L2-normalised; clear errors for bad input.

    The hot path is one pass for the squared norms (NaN and inf propagate into them) and one
    division; the row-by-row checks run only to explain a failure.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise IndexError_(f"{what} must be a 2-d array (n, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise IndexError_(
            f"{what} have dim {x.shape[1]} but the index holds {dim}-d vectors; embed the "
            "query with the index's encoder (see idx.manifest)"
        )
    if x.shape[0] == 1:  # single queries: scalar arithmetic is cheaper than array calls
        sq1 = float(np.dot(x[0], x[0]))
        if not 0.0 < sq1 < math.inf:
            _explain_bad_rows(x, what)
        out = x * np.float32(1.0 / math.sqrt(sq1))
    else:
        sq = np.einsum("ij,ij->i", x, x)
        if not (np.isfinite(sq).all() and sq.all()):
            _explain_bad_rows(x, what)
        out = x / np.sqrt(sq)[:, None]
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


def _explain_bad_rows(x: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise IndexError_(
            f"{int(bad.sum())} of {len(x)} {what} contain NaN or inf (first: row "
            f"{int(np.flatnonzero(bad)[0])}); re-embed or drop those rows"
        )
    zero = ~x.any(axis=1)
    if zero.any():
        raise IndexError_(
            f"{int(zero.sum())} of {len(x)} {what} are all zeros and have no "
            "direction for cosine search; drop those rows"
        )
    raise IndexError_(f"{what} have values too large for float32 norms; rescale them")


def embedding_record(adata, key: str) -> dict[str, Any]:
    """Provenance of ``obsm[key]`` (``{}`` when the table has none).

    ``tl.embed`` records the features key; a ``_proj`` key is found through its
    ``proj_key`` entry.
    """
    node = adata.uns.get(K.UNS, {})
    recs = _prov.plain(node.get(K.UNS_EMBEDDINGS, {})) if node else {}
    if key in recs:
        return dict(recs[key])
    for rec in recs.values():
        if isinstance(rec, dict) and rec.get("proj_key") == key:
            return dict(rec)
    return {}


@dataclass
class Collected:
    vectors: np.ndarray
    meta: pd.DataFrame
    slides: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)


def collect(tables: list, use_rep: str, start_id: int) -> Collected:
    """Vectors, metadata and provenance of every usable row of ``tables``.

    Rows marked ``obs["tile_ok"] == False`` (damaged regions, embedded as white tiles) are
    left out. Ids run from ``start_id`` upwards in table order.
    """
    vecs, frames, slides = [], [], {}
    embedding: dict[str, Any] = {}
    for i, t in enumerate(tables):
        what = f"table {i + 1} of {len(tables)}" if len(tables) > 1 else "the table"
        _prov.require_tile_table(t, what)
        if use_rep not in t.obsm:
            keys = [k for k in t.obsm if k.startswith(K.REP_PREFIX)]
            raise DataError(
                f"{what} has no obsm[{use_rep!r}]; embed it first (mm.tl.embed) or pick one "
                f"of {keys}"
            )
        rec = embedding_record(t, use_rep)
        if rec and embedding and rec.get("encoder") != embedding.get("encoder"):
            raise IndexError_(
                f"tables embedded with different encoders ({embedding.get('encoder')!r} and "
                f"{rec.get('encoder')!r}) cannot share an index"
            )
        embedding = embedding or rec
        ok = t.obs[K.TILE_OK].to_numpy(bool) if K.TILE_OK in t.obs else np.ones(t.n_obs, bool)
        if (~ok).any():
            log.info("leaving out %d damaged tile(s) (obs[%r] False)", (~ok).sum(), K.TILE_OK)
        x = _prov.numeric_rep(t.obsm[use_rep], f"{what}'s obsm[{use_rep!r}]")[ok]
        vecs.append(prepare(x, what=f"rows of obsm[{use_rep!r}]") if len(x) else x)
        frames.append(_meta_frame(t, ok))
        node = t.uns.get(K.UNS, {})
        for sid, srec in _prov.plain(node.get(K.UNS_SLIDES, {})).items() if node else []:
            slides[str(sid)] = srec
    dims = {v.shape[1] for v in vecs}
    if len(dims) > 1:
        raise IndexError_(f"obsm[{use_rep!r}] has different dims across tables: {sorted(dims)}")
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    meta = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(FIXED))
    dup = meta[OBS_NAME].duplicated() if len(meta) else None
    if dup is not None and dup.any():
        raise IndexError_(
            f"{int(dup.sum())} tile(s) appear more than once (first: "
            f"{meta.loc[dup, OBS_NAME].iloc[0]!r}); was a table passed twice? index each slide once"
        )
    meta.index = pd.RangeIndex(start_id, start_id + len(meta), name=TILE_ID)
    meta.index = meta.index.astype(np.int64)
    return Collected(vectors, _clean(meta), slides, embedding)


def _meta_frame(t, ok: np.ndarray) -> pd.DataFrame:
    obs = t.obs.loc[ok]
    df = pd.DataFrame({OBS_NAME: np.asarray(obs.index, dtype=str)})
    for col in obs.columns:
        cat = isinstance(obs[col].dtype, pd.CategoricalDtype)
        df[col] = obs[col].astype(str).to_numpy() if cat else obs[col].to_numpy()
    if MPP not in df and len(df):
        node = t.uns.get(K.UNS, {})
        slides = _prov.plain(node.get(K.UNS_SLIDES, {})) if node else {}
        mpp = {
            sid: (rec.get(K.UNS_TILING) or {}).get("mpp_effective", rec.get("mpp"))
            for sid, rec in slides.items()
        }
        df[MPP] = df[K.SLIDE_ID].astype(str).map(mpp).astype(float)
    return df


def _clean(meta: pd.DataFrame) -> pd.DataFrame:
    """Parquet-safe dtypes: strings for objects, categories for slide ids."""
    for col in meta.columns:
        if meta[col].dtype == object:
            meta[col] = meta[col].astype(str)
    if K.SLIDE_ID in meta:
        meta[K.SLIDE_ID] = meta[K.SLIDE_ID].astype(str).astype("category")
    return meta


def append(meta: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``meta`` followed by ``new`` (columns unioned), dtypes cleaned."""
    if len(meta) == 0:
        return _clean(new.copy())
    a = meta.copy()
    if K.SLIDE_ID in a:
        a[K.SLIDE_ID] = a[K.SLIDE_ID].astype(str)
    b = new.copy()
    if K.SLIDE_ID in b:
        b[K.SLIDE_ID] = b[K.SLIDE_ID].astype(str)
    out = pd.concat([a, b])
    out.index.name = TILE_ID
    return _clean(out)
