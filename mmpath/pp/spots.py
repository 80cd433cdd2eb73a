"""Spot-centred tiles: a spatial transcriptomics table + its H&E slide -> a tile table.

The result is an ordinary tile table (``obs`` ``slide_id``/``x``/``y``/``tissue_frac``,
``obsm["spatial"]`` tile centres, the slide and tiling provenance in ``uns["mmpath"]``), so
:func:`mmpath.io.read_tiles`, :func:`mmpath.io.iter_tiles` and :func:`mmpath.tl.embed` work on
it unchanged, and it carries the spots' expression in ``X``/``var`` (and layers), one row per
spot, with the barcodes in ``obs["barcode"]``. Nothing reads pixels here: tiles are streamed
later by whoever needs them.

Geometry. Spot centres are in full-resolution pixels (the slide's level 0). A tile covers the
spot diameter (55 µm for Visium): at the encoder's ``mpp`` that is
``round(diameter_um / mpp)`` pixels, read from the best pyramid level by
:func:`mmpath.pp.plan_read` (the same rule as :func:`mmpath.pp.tile`). Slides without mpp
metadata (plain JPEG/PNG exports) take it from the scale factors: 55 µm spans
``spot_diameter_fullres`` pixels.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError, SlideError
from mmpath.io import _prov
from mmpath.io._mpp import check_mpp
from mmpath.io.slide import Slide
from mmpath.io.visium import VISIUM_SPOT_DIAMETER_UM, spot_scalefactors
from mmpath.pp.tiling import plan_read

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["spot_tiles"]


def _scale(st, scale: float | str, library_id: str | None) -> float:
    if isinstance(scale, str):
        key = f"tissue_{scale}_scalef"
        sf = spot_scalefactors(st, library_id=library_id)
        if key not in sf:
            raise DataError(f"the spatial table has no {key} scale factor (scale={scale!r})")
        return sf[key]
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise DataError(f"scale must be > 0, got {scale}")
    return scale


def spot_tiles(
    st,
    slide: Slide,
    *,
    diameter_um: float = VISIUM_SPOT_DIAMETER_UM,
    size: int | None = None,
    mpp: float | None = None,
    scale: float | str = 1.0,
    library_id: str | None = None,
    tissue=None,
) -> AnnData:
    """Tile table of spot-centred tiles, one per spot, carrying the spots' expression.

    Parameters
    ----------
    st
        Spatial transcriptomics (:func:`mmpath.io.read_visium`): spots x genes with
        ``obsm["spatial"]`` in full-resolution pixels.
    slide
        The H&E the spots were aligned to (its level 0 is the full-resolution image).
    diameter_um
        Spot diameter in µm: the tile's footprint (Visium: 55).
    size
        Tile side in output pixels; defaults to ``round(diameter_um / mpp)``.
    mpp
        µm/px of the tiles (the encoder's, e.g. 0.5). ``None``: the slide's own resolution, or
        ``diameter_um / size`` when ``size`` is given.
    scale
        Factor from ``obsm["spatial"]`` to the slide's level-0 pixels: 1 for the full-resolution
        image, or ``"hires"``/``"lowres"`` to use the Space Ranger image scale factors.
    library_id
        Library of ``st`` (when it holds several).
    tissue
        A :class:`~mmpath.pp.TissueMask` for ``tissue_frac``; detected when ``None``.

    Returns
    -------
    A new AnnData tile table (spots x genes). A slide without mpp gets the one derived from
    the scale factors (``slide.mpp`` is set, recorded as an override in the provenance).

    Example
    -------
    >>> spots = mm.pp.spot_tiles(st, slide, diameter_um=55, mpp=0.5)
    >>> mm.tl.embed(spots, encoder="uni")
    """
    import anndata as ad

    from mmpath.pp.tissue import detect_tissue

    if K.SPATIAL not in st.obsm:
        raise DataError("the spatial table has no obsm['spatial']; read it with mm.io.read_visium")
    if not np.isfinite(diameter_um) or diameter_um <= 0:
        raise DataError(f"diameter_um must be > 0, got {diameter_um}")
    try:  # the one mpp rule; a bad request is a DataError here, like the other arguments
        mpp = check_mpp(mpp, what="spot tiles", api="mpp=", cli="--mpp", target=True)
    except SlideError as err:
        raise DataError(str(err)) from None
    if size is not None and (not np.isfinite(size) or size <= 0):
        raise DataError(f"size must be > 0, got {size}")
    sf = spot_scalefactors(st, library_id=library_id)
    k = _scale(st, scale, library_id)
    # 55 µm (a Visium spot) spans spot_diameter_fullres full-resolution pixels.
    spot_mpp = VISIUM_SPOT_DIAMETER_UM / sf["spot_diameter_fullres"] / k
    if slide.mpp is None:
        slide.mpp = spot_mpp
        slide.mpp_source = "override"
        log.info("slide %r: mpp %.4g from the spot scale factors", slide.slide_id, slide.mpp)
    elif abs(slide.mpp / spot_mpp - 1) > 0.25:
        log.warning(
            "slide %r: its mpp %.4g disagrees with the %.4g that the spot scale factors imply "
            "(55 µm spots); tiles will not cover the spots as intended: check the slide's "
            "metadata or that this is the image the spots were aligned to (--slide-mpp / "
            "slide mpp= overrides)",
            slide.slide_id,
            slide.mpp,
            spot_mpp,
        )
    if size is None:
        tile_mpp = mpp if mpp is not None else slide.mpp
        size = max(1, int(round(diameter_um / tile_mpp)))
    elif mpp is None:
        mpp = diameter_um / size
    if mpp is not None and abs(size * mpp / diameter_um - 1) > 0.05:
        log.info("tiles cover %.1f µm, not the %.1f µm spot", size * mpp, diameter_um)
    plan = plan_read(slide, int(size), mpp=mpp)
    size0 = plan["size0"]
    centres = np.asarray(st.obsm[K.SPATIAL], np.float64) * k
    if centres.ndim != 2 or centres.shape[1] != 2 or not np.isfinite(centres).all():
        bad = int((~np.isfinite(centres)).any(axis=-1).sum()) if centres.ndim == 2 else 0
        raise SlideError(
            f"obsm['spatial'] must be finite (n_spots, 2) pixel coordinates; {bad} spot(s) "
            "are NaN or infinite: drop or fix them (they would become tiles at -2**63)"
        )
    W, H = slide.dimensions
    outside = (
        (centres[:, 0] < 0) | (centres[:, 1] < 0) | (centres[:, 0] >= W) | (centres[:, 1] >= H)
    )
    if outside.any():
        i = int(np.argmax(outside))
        raise SlideError(
            f"{int(outside.sum())} of {len(centres)} spots lie outside slide {slide.slide_id!r} "
            f"({W}x{H} px), e.g. {st.obs_names[i]!r} at ({centres[i, 0]:.0f}, "
            f"{centres[i, 1]:.0f}); pass the full-resolution H&E Space Ranger aligned (or "
            "scale='hires' with the hires image)"
        )
    x = np.floor(centres[:, 0] - size0 / 2 + 0.5)
    y = np.floor(centres[:, 1] - size0 / 2 + 0.5)
    xc = np.clip(x, 0, max(W - size0, 0))
    yc = np.clip(y, 0, max(H - size0, 0))
    shifted = int(((xc != x) | (yc != y)).sum())
    if shifted:
        warnings.warn(
            f"{shifted} spot tile(s) near the edge of slide {slide.slide_id!r} were shifted "
            "inside it (their spot centre stays in obs['spot_x'/'spot_y'])",
            stacklevel=2,
        )
    xs, ys = xc.astype(np.int64), yc.astype(np.int64)
    if tissue is None:
        tissue = detect_tissue(slide)
    frac = tissue.fractions(xs, ys, size0, size0).astype(np.float32)

    sid = slide.slide_id
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical([sid] * len(xs)),
            K.X: xs,
            K.Y: ys,
            K.TISSUE_FRAC: frac,
            K.BARCODE: np.asarray(st.obs_names, dtype=str),
            K.SPOT_X: centres[:, 0],
            K.SPOT_Y: centres[:, 1],
        },
        index=[K.obs_name(sid, i) for i in range(len(xs))],
    )
    for col in st.obs.columns:
        if col not in obs:
            obs[col] = st.obs[col].to_numpy()
    X = st.X.copy() if st.X is not None else np.zeros((len(xs), st.n_vars), np.float32)
    spots = ad.AnnData(X=X, obs=obs, var=st.var.copy())
    for name, layer in st.layers.items():
        spots.layers[name] = layer.copy()
    spots.obsm[K.SPATIAL] = np.stack([xs + size0 / 2, ys + size0 / 2], axis=1).astype(np.float64)
    record = slide.provenance()
    record[K.UNS_TILING] = {
        "kind": "spots",
        "size": int(size),
        "stride": int(size),
        "mpp": mpp,
        "diameter_um": float(diameter_um),
        "coordinate_scale": float(k),
        "library_id": sf["library_id"],
        "min_tissue": 0.0,
        "n_grid": int(len(xs)),
        "n_tiles": int(len(xs)),
        "tissue": tissue.to_dict(),
        **plan,
    }
    _prov.set_slide_record(spots, sid, record)
    log.info("slide %r: %d spot tiles of %d px (level %d)", sid, len(xs), size, plan["level"])
    return spots
