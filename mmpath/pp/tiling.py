"""Tiling: a slide -> an AnnData tile table (one row per tile).

Level choice. For a target ``mpp`` we read from the deepest pyramid level that is not
coarser than the target (within ``mpp_tolerance``) and resize only when the read size
differs from the tile size by more than that tolerance. A 0.499 µm/px slide tiled at 0.5
is read natively, and the true (effective) mpp is recorded. Upsampling beyond 2x is refused:
it means the metadata or the request is wrong.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath._settings import spell
from mmpath.errors import SlideError
from mmpath.io import _prov
from mmpath.io._mpp import check_mpp
from mmpath.io.slide import Slide
from mmpath.pp.tissue import TissueMask, detect_tissue

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["tile", "plan_read"]


def plan_read(
    slide: Slide,
    size: int,
    *,
    mpp: float | None = None,
    level: int | None = None,
    mpp_tolerance: float = 0.02,
) -> dict[str, Any]:
    """Which level to read and how many pixels, for tiles of ``size`` px at ``mpp``/``level``.

    Returns a dict with ``level``, ``read_size`` (pixels read at that level),
    ``size0`` (tile side in level-0 pixels) and ``mpp_effective`` (None when unknown).
    """
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise SlideError(f"tile size must be a positive integer number of pixels, got {size!r}")
    if mpp is not None and level is not None:
        raise SlideError("give either mpp= or level=, not both")
    if level is not None:
        if not 0 <= level < slide.level_count:
            raise SlideError(
                f"slide {slide.slide_id!r} has levels 0..{slide.level_count - 1}, not {level}"
            )
        lds = slide.level_downsamples[level]
        read_size = int(size)
    else:
        if mpp is None:
            lds, level, read_size = 1.0, 0, int(size)
        else:
            mpp = check_mpp(
                mpp, what=f"slide {slide.slide_id!r}", api="mpp=", cli="--mpp", target=True
            )
            m0 = slide.require_mpp()
            ds = mpp / m0
            if ds < 0.5:
                raise SlideError(
                    f"slide {slide.slide_id!r} is {m0:.4g} µm/px but {mpp:.4g} µm/px was asked "
                    f"({1 / ds:.3g}x upsampling): the slide's mpp or the request is wrong; give "
                    + spell(
                        "the slide's mpp with open_slide(path, mpp=...) or ask for a coarser mpp=",
                        "the slide's mpp with --slide-mpp (or --estimate-mpp) or a coarser --mpp",
                    )
                )
            if ds < 1 / (1 + mpp_tolerance):
                warnings.warn(
                    f"slide {slide.slide_id!r}: upsampling {1 / ds:.2f}x to reach {mpp} µm/px",
                    stacklevel=3,
                )
            level = slide.best_level_for_downsample(ds * (1 + mpp_tolerance))
            lds = slide.level_downsamples[level]
            exact = size * ds / lds
            read_size = int(size) if abs(exact / size - 1) <= mpp_tolerance else round(exact)
    size0 = read_size * lds
    W, H = slide.dimensions
    if size0 > W * 1.0001 or size0 > H * 1.0001:
        raise SlideError(
            f"a {size}px tile at this resolution covers {size0:.0f} level-0 px, larger than "
            f"slide {slide.slide_id!r} ({W}x{H}); use a smaller size or a finer mpp"
        )
    eff = slide.mpp * lds * read_size / size if slide.mpp is not None else None
    return {
        "level": int(level),
        "read_size": int(read_size),
        "size0": float(size0),
        "level_downsample": float(lds),
        "mpp_effective": eff,
    }


def tile(
    slide: Slide,
    size: int = 224,
    *,
    mpp: float | None = None,
    level: int | None = None,
    stride: int | None = None,
    overlap: int = 0,
    min_tissue: float = 0.5,
    tissue: TissueMask | None = None,
    mpp_tolerance: float = 0.02,
) -> AnnData:
    """Cut ``slide`` into a grid of ``size`` x ``size`` tiles and return the tile table.

    Parameters
    ----------
    slide
        The slide (:func:`mmpath.io.open_slide` or :class:`mmpath.io.ArraySlide`).
    size
        Tile side in output pixels.
    mpp
        Target µm/px of the tiles. ``None`` with ``level=None`` means level 0, native.
    level
        Tile at this pyramid level instead of a target mpp.
    stride
        Step between tiles in output pixels; defaults to ``size - overlap``.
    overlap
        Overlap between neighbouring tiles in output pixels (ignored when ``stride`` is set).
    min_tissue
        Keep tiles whose tissue fraction is at least this (0 keeps every tile).
    tissue
        A precomputed :class:`~mmpath.pp.TissueMask`; detected when ``None``.
    mpp_tolerance
        Relative mpp difference read without resampling (0.02: 0.49-0.51 reads as 0.5).

    Returns
    -------
    AnnData tile table: ``obs`` has ``slide_id``, ``x``, ``y`` (level-0 top-left) and
    ``tissue_frac``; ``obsm["spatial"]`` holds tile centres; ``uns["mmpath"]`` the slide and
    tiling provenance. A slide without tissue gives an empty table and a warning.

    Example
    -------
    >>> tiles = mm.pp.tile(slide, 224, mpp=0.5, min_tissue=0.5)
    """
    import anndata as ad

    if not 0.0 <= min_tissue <= 1.0:
        raise SlideError(f"min_tissue must be within 0..1, got {min_tissue}")
    plan = plan_read(slide, size, mpp=mpp, level=level, mpp_tolerance=mpp_tolerance)
    if stride is None:
        if not 0 <= overlap < size:
            raise SlideError(f"overlap must be within 0..{size - 1} px, got {overlap}")
        stride = size - overlap
    if stride <= 0:
        raise SlideError(f"stride must be > 0 px, got {stride}")
    step0 = stride * plan["size0"] / size
    size0 = plan["size0"]
    W, H = slide.dimensions
    # Tiles must lie inside the slide; the last column/row that fits is kept.
    nx = int(math.floor((W - size0) / step0 + 1e-9)) + 1
    ny = int(math.floor((H - size0) / step0 + 1e-9)) + 1
    gx, gy = np.meshgrid(np.arange(nx) * step0, np.arange(ny) * step0)
    xs = np.floor(gx.ravel() + 1e-6).astype(np.int64)
    ys = np.floor(gy.ravel() + 1e-6).astype(np.int64)

    if tissue is None:
        tissue = detect_tissue(slide)
    frac = tissue.fractions(xs, ys, size0, size0).astype(np.float32)
    keep = frac >= min_tissue if min_tissue > 0 else np.ones(frac.shape, bool)
    xs, ys, frac = xs[keep], ys[keep], frac[keep]
    if xs.size == 0:
        warnings.warn(
            f"slide {slide.slide_id!r}: no tile has tissue fraction >= {min_tissue}; "
            "the tile table is empty (lower min_tissue, or check the slide)",
            stacklevel=2,
        )

    sid = slide.slide_id
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical([sid] * xs.size),
            K.X: xs,
            K.Y: ys,
            K.TISSUE_FRAC: frac,
        },
        index=[K.obs_name(sid, i) for i in range(xs.size)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm[K.SPATIAL] = np.stack([xs + size0 / 2, ys + size0 / 2], axis=1).astype(np.float64)
    record = slide.provenance()
    record[K.UNS_TILING] = {
        "size": int(size),
        "stride": int(stride),
        "mpp": mpp,
        "min_tissue": float(min_tissue),
        "n_grid": int(nx * ny),
        "n_tiles": int(xs.size),
        "tissue": tissue.to_dict(),
        **plan,
    }
    _prov.set_slide_record(adata, sid, record)
    log.info("slide %r: %d tiles of %d px (level %d)", sid, xs.size, size, plan["level"])
    return adata
