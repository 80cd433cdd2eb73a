"""Tiles drawn over the slide thumbnail, coloured by any obs column or gene."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.io._atomic import atomic_path

__all__ = ["tiles"]


def _values(adata, color: str) -> pd.Series:
    if color in adata.obs:
        return adata.obs[color]
    if color in adata.var_names:
        col = adata[:, color].X
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        return pd.Series(col.ravel(), index=adata.obs_names, name=color)
    raise DataError(
        f"{color!r} is neither an obs column nor a gene of this table; obs columns: "
        f"{', '.join(map(str, adata.obs.columns[:10]))}"
    )


def tiles(
    adata,
    slide=None,
    *,
    color: str | None = K.TISSUE_FRAC,
    slide_id: str | None = None,
    tissue=None,
    max_size: int = 1024,
    cmap: str = "viridis",
    alpha: float = 0.55,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
):
    """Draw the slide thumbnail with the tissue outline and tiles coloured by ``color``.

    Parameters
    ----------
    adata
        A tile table (one slide, or a cohort with ``slide_id=``).
    slide
        The open slide; reopened from provenance when ``None``.
    color
        An obs column (numeric or categorical) or a gene in ``var_names``; ``None`` draws
        tile outlines only.
    slide_id
        Which slide of a cohort table to draw.
    tissue
        A :class:`~mmpath.pp.TissueMask` whose contours are drawn.
    max_size
        Longer side of the thumbnail in pixels.
    cmap, alpha, vmin, vmax
        Colour mapping of numeric values.
    title
        Figure title (defaults to the slide id and colour).
    save
        Write a PNG here (atomically).

    Returns
    -------
    The matplotlib Figure.

    Example
    -------
    >>> mm.pl.tiles(tiles, slide, color="tissue_frac", save="grid.png")
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from mmpath.io.tiles import open_slide_from

    if slide_id is None:
        ids = _prov.slide_ids(adata) if adata.n_obs else list(_prov.root(adata)[K.UNS_SLIDES])
        if len(ids) > 1:
            raise DataError(f"the table holds {len(ids)} slides; pass slide_id= to pick one")
        slide_id = ids[0] if ids else None
    sub = adata[adata.obs[K.SLIDE_ID].astype(str) == slide_id] if adata.n_obs else adata
    own = slide is None
    if own:
        slide = open_slide_from(adata, slide_id)
    try:
        thumb = slide.get_thumbnail(max_size)
        W, H = slide.dimensions
    finally:
        if own:
            slide.close()
    scale = thumb.shape[1] / W
    size0 = _prov.tiling(adata, slide_id)["size0"] if slide_id else 0

    fig, ax = plt.subplots(figsize=(7, 7 * thumb.shape[0] / thumb.shape[1] + 0.6), dpi=110)
    ax.imshow(thumb)
    if tissue is not None:
        for c in tissue.contours:
            ax.plot(c[:, 0] * scale, c[:, 1] * scale, color="black", lw=1.0)
    xs = sub.obs[K.X].to_numpy() * scale if sub.n_obs else np.array([])
    ys = sub.obs[K.Y].to_numpy() * scale if sub.n_obs else np.array([])
    rects = [Rectangle((x, y), size0 * scale, size0 * scale) for x, y in zip(xs, ys)]
    if color is None or sub.n_obs == 0:
        ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor="tab:blue", lw=0.5))
    else:
        values = _values(sub, color)
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
            cats = pd.Categorical(values.astype(str))
            palette = plt.get_cmap("tab20" if len(cats.categories) > 10 else "tab10")
            colors = [palette(i % palette.N) for i in cats.codes]
            ax.add_collection(PatchCollection(rects, facecolor=colors, alpha=alpha, lw=0))
            handles = [
                Rectangle((0, 0), 1, 1, color=palette(i % palette.N))
                for i in range(len(cats.categories))
            ]
            ax.legend(
                handles,
                list(cats.categories),
                loc="upper left",
                bbox_to_anchor=(1.01, 1),
                fontsize=8,
                frameon=False,
            )
        else:
            coll = PatchCollection(rects, cmap=cmap, alpha=alpha, lw=0)
            coll.set_array(values.to_numpy(dtype=float))
            coll.set_clim(vmin, vmax)
            ax.add_collection(coll)
            fig.colorbar(coll, ax=ax, fraction=0.04, pad=0.02, label=color)
    ax.set_xlim(0, thumb.shape[1])
    ax.set_ylim(thumb.shape[0], 0)
    ax.set_axis_off()
    ax.set_title(
        title or f"{slide_id}: {sub.n_obs} tiles" + (f", {color}" if color else ""), fontsize=10
    )
    fig.tight_layout()
    if save is not None:
        save = Path(save)
        with atomic_path(save) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return fig
