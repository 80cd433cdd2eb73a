"""Provenance in ``uns["mmpath"]``: the only code that touches that dict's layout.

Every step records its resolved parameters with one writer, :func:`record_run`
(``record_run(adata, step, key, record)``), and reads them back with :func:`run_record`; a
step that makes a new table (a slide table) starts its provenance with :func:`new_root`. The
records live in ``uns["mmpath"][<section>][key]``: ``runs`` for most steps, and the sections
that segmentation (``segment``), anomaly scoring (``anomaly``) and MIL (``mil``) have always
used (:data:`SECTIONS`), kept so tables written before keep reading the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.errors import DataError


def plain(obj: Any) -> Any:
    """Turn what h5ad gives back (numpy arrays and scalars) into plain Python."""
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [plain(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def root(adata) -> dict[str, Any]:
    """``uns["mmpath"]`` (created if missing)."""
    node = adata.uns.get(K.UNS)
    if node is None:
        node = adata.uns[K.UNS] = {K.UNS_VERSION: __version__, K.UNS_SLIDES: {}}
    node.setdefault(K.UNS_SLIDES, {})
    return node


#: step -> section of ``uns["mmpath"]`` holding its records (any other step: ``runs``)
SECTIONS = {
    "segment": K.UNS_SEGMENT,
    "anomaly": K.UNS_ANOMALY,
    "mil": K.UNS_MIL,
}


def _section(step: str) -> str:
    return SECTIONS.get(step, K.UNS_RUNS)


def record_run(adata, step: str, key: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """Store ``record`` (JSON-able) as the provenance of ``step`` run under ``key``.

    A re-run under the same key replaces the record; the previous one is returned (plain
    Python) so the step can drop the columns it wrote, or ``None``.
    """
    node = root(adata).setdefault(_section(step), {})
    previous = node.get(key)
    node[key] = record
    return None if previous is None else plain(previous)


def run_record(adata, step: str, key: str) -> dict[str, Any] | None:
    """The record :func:`record_run` stored for ``step`` under ``key`` (plain), or ``None``."""
    node = (adata.uns.get(K.UNS) or {}).get(_section(step)) or {}
    return plain(node[key]) if key in node else None


def new_root(adata, slides: dict[str, Any], step: str, key: str, record: dict[str, Any]) -> None:
    """Provenance of a table a step made (a slide table): its slides and the step's record."""
    adata.uns[K.UNS] = {K.UNS_VERSION: __version__, K.UNS_SLIDES: dict(slides)}
    record_run(adata, step, key, record)


def slide_ids(adata) -> list[str]:
    """Slide ids present in the table's rows, in order of first appearance."""
    if K.SLIDE_ID not in adata.obs:
        raise DataError("the table has no obs['slide_id'] column; is it an mmpath tile table?")
    col = adata.obs[K.SLIDE_ID]
    return [str(s) for s in dict.fromkeys(col.astype(str))]


def slide_record(adata, slide_id: str) -> dict[str, Any]:
    """Provenance of one slide (path, mpp, dims, tiling...)."""
    slides = root(adata)[K.UNS_SLIDES]
    if slide_id not in slides:
        raise DataError(
            f"the table has no provenance for slide {slide_id!r}; it was not made by "
            "mm.pp.tile (or uns was dropped: combine tables with mm.io.concat)"
        )
    return plain(slides[slide_id])


def set_slide_record(adata, slide_id: str, record: dict[str, Any]) -> None:
    root(adata)[K.UNS_SLIDES][slide_id] = record


def tiling(adata, slide_id: str) -> dict[str, Any]:
    """The tiling spec of one slide (checked: sizes > 0, level >= 0)."""
    rec = slide_record(adata, slide_id)
    if K.UNS_TILING not in rec or not isinstance(rec[K.UNS_TILING], dict):
        raise DataError(f"slide {slide_id!r} has no tiling spec in the table's provenance")
    spec = rec[K.UNS_TILING]
    for key, low in (("size", 1), ("read_size", 1), ("level", 0)):
        value = spec.get(key, low)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise DataError(
                f"slide {slide_id!r}: the table's tiling spec has {key}={value!r} (must be a "
                f"whole number >= {low}); the table was edited or damaged: re-tile the slide"
            )
        if value != int(value):
            raise DataError(
                f"slide {slide_id!r}: the table's tiling spec has {key}={value!r}, not a whole "
                "number; the table was edited or damaged: re-tile the slide"
            )
    return spec


def tile_xy(adata) -> np.ndarray:
    """``(n, 2)`` int64 level-0 top-left corners of the tiles; a :class:`DataError` for
    missing, non-finite (NaN) or negative coordinates instead of casting NaN to -2**63."""
    xy = (
        np.stack(
            [np.asarray(adata.obs[K.X], np.float64), np.asarray(adata.obs[K.Y], np.float64)], axis=1
        )
        if adata.n_obs
        else np.zeros((0, 2))
    )
    bad = ~np.isfinite(xy).all(axis=1) | (xy < 0).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{int(bad.sum())} tile(s) have missing, non-finite or negative x/y, e.g. "
            f"{str(adata.obs_names[i])!r} at ({xy[i, 0]}, {xy[i, 1]}); fix or re-tile the table"
        )
    return xy.astype(np.int64)


def numeric_rep(x, what: str, dtype=np.float32) -> np.ndarray:
    """``x`` (an obsm entry) as a ``dtype`` array (``None`` keeps its dtype), or a
    :class:`DataError` naming ``what`` when it holds strings or objects."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{what} has dtype {arr.dtype} (not numbers); pass an embedding key such as "
            "X_<encoder> made by mm.tl.embed"
        )
    return arr if dtype is None else arr.astype(dtype, copy=False)


def is_slide_table(adata) -> bool:
    """A slide table (one row per slide, ``n_tiles`` in obs) rather than a tile table."""
    return K.N_TILES in adata.obs and not all(c in adata.obs for c in (K.SLIDE_ID, K.X, K.Y))


def require_tile_table(adata, what: str = "the table") -> None:
    """A :class:`DataError` unless ``adata`` has the tile columns (``slide_id``, ``x``, ``y``).

    A slide table (one row per slide, e.g. ``zs_slides.h5ad`` written next to the tile tables)
    is the usual mix-up when tables are passed by glob, so it is named as such.
    """
    missing = [c for c in (K.SLIDE_ID, K.X, K.Y) if c not in adata.obs]
    if not missing:
        return
    if is_slide_table(adata):
        kind = "a slide table (one row per slide), not a tile table"
    else:
        kind = f"not an mmpath tile table (no obs{missing})"
    raise DataError(f"{what} is {kind}; pass only the tile tables made by `mmpath tile`")


def set_slide_mpp(
    adata, slide_id: str, mpp: float, *, source: str, estimate: dict[str, Any] | None = None
) -> None:
    """Give a tiled slide its level-0 ``mpp`` after the fact (``mmpath embed --slide-mpp``).

    The tiling geometry is unchanged (tiles were cut in pixels); their effective mpp follows.
    """
    rec = slide_record(adata, slide_id)
    rec["mpp"], rec["mpp_source"] = float(mpp), source
    if estimate is not None:
        rec["mpp_estimate"] = estimate
    t = rec.get(K.UNS_TILING)
    if t is not None:
        t["mpp_effective"] = float(mpp) * t["level_downsample"] * t["read_size"] / t["size"]
    set_slide_record(adata, slide_id, rec)
