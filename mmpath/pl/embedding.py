"""Scatter plots of a 2-d embedding (UMAP, PCA, spatial...) coloured by an obs column."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmpath.errors import DataError
from mmpath.io._atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["embedding"]


def embedding(
    adata,
    *,
    basis: str = "umap",
    color: str | None = None,
    size: float | None = None,
    cmap: str = "viridis",
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Draw ``obsm["X_<basis>"]`` (first two dims) coloured by an obs column or gene.

    A thin, non-interactive cousin of ``scanpy.pl.embedding`` that always returns the
    figure (and can save it atomically), so reports and scripts can use it headless.

    Parameters
    ----------
    adata
        A table with ``obsm["X_<basis>"]`` (or ``obsm[basis]``), e.g. after ``sc.tl.umap``.
    basis
        ``"umap"``, ``"pca"``, ``"spatial"``... or a full obsm key.
    color
        An obs column (categorical or numeric) or a gene; ``None`` draws grey points.
    size
        Marker size (default scales with the number of points).
    cmap
        Colour map of numeric values.
    title
        Figure title.
    save
        Write a PNG here (atomically).

    Returns
    -------
    The matplotlib Figure.

    Example
    -------
    >>> sc.tl.umap(tiles)
    >>> mm.pl.embedding(tiles, basis="umap", color="leiden")
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    key = basis if basis in adata.obsm else f"X_{basis}"
    if key not in adata.obsm:
        raise DataError(
            f"no obsm[{key!r}] (obsm keys: {list(adata.obsm)}); compute it first, e.g. "
            "sc.pp.neighbors + sc.tl.umap"
        )
    xy = np.asarray(adata.obsm[key])[:, :2]
    n = len(xy)
    size = size if size is not None else max(2.0, min(40.0, 4000.0 / max(n, 1)))
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    if color is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c="0.5", lw=0)
    else:
        if color in adata.obs:
            values = adata.obs[color]
        elif color in adata.var_names:
            col = adata[:, color].X
            col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
            values = pd.Series(col.ravel(), index=adata.obs_names)
        else:
            raise DataError(f"{color!r} is neither an obs column nor a gene of this table")
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
            cats = pd.Categorical(values.astype(str))
            palette = plt.get_cmap("tab20" if len(cats.categories) > 10 else "tab10")
            for i, cat in enumerate(cats.categories):
                sel = cats.codes == i
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    s=size,
                    color=palette(i % palette.N),
                    lw=0,
                    label=str(cat),
                )
            ax.legend(
                loc="upper left",
                bbox_to_anchor=(1.01, 1),
                fontsize=8,
                frameon=False,
                markerscale=max(1.0, 20 / size) ** 0.5,
            )
        else:
            sc_ = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=values.to_numpy(float), cmap=cmap, lw=0)
            fig.colorbar(sc_, ax=ax, fraction=0.05, pad=0.02, label=color)
    name = key[2:] if key.startswith("X_") else key
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or (f"{name}: {color}" if color else name), fontsize=10)
    fig.tight_layout()
    if save is not None:
        with atomic_path(save) as tmp:
            fig.savefig(tmp, format="png")
    return fig
