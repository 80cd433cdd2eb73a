"""A gallery of search results: the query tile, then its neighbours, each labelled."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io._atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["gallery"]


def _hit_pixels(hits: pd.DataFrame, source, remap) -> np.ndarray:
    from mmpath.io import read_tiles

    if hasattr(source, "tiles") and hasattr(source, "search_vectors"):  # a TileIndex
        table = source.tiles(hits)
    elif hasattr(source, "obs"):
        if "obs_name" not in hits:
            raise DataError("hits need an obs_name column to find their rows in the table")
        table = source[hits["obs_name"].astype(str).to_numpy()]
    else:
        raise DataError("source must be the TileIndex searched or the tile table it indexes")
    return read_tiles(None, table, remap=remap)


def _query_pixels(query, remap) -> np.ndarray | None:
    if query is None:
        return None
    if hasattr(query, "obs"):
        from mmpath.io import read_tiles

        return read_tiles(None, query[:1], remap=remap)[0]
    if isinstance(query, (str, os.PathLike)):
        from PIL import Image

        with Image.open(query) as im:
            return np.asarray(im.convert("RGB"))
    arr = np.asarray(query)
    return arr[0] if arr.ndim == 4 else arr


def _label(row) -> str:
    return f"{row[K.SLIDE_ID]}\n({int(row[K.X])}, {int(row[K.Y])})"


def gallery(
    hits: pd.DataFrame,
    source,
    *,
    query=None,
    query_id: int = 0,
    ncols: int = 5,
    tile_inches: float = 1.8,
    remap=None,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Draw a query tile and its nearest tiles, each labelled with slide and coordinates.

    Parameters
    ----------
    hits
        A hits DataFrame from a :class:`~mmpath.index.TileIndex` search.
    source
        The TileIndex that was searched (its provenance locates the slides), or the tile
        table it indexes.
    query
        The query: a tile-table row (AnnData), an image array or an image file; ``None``
        draws the hits only.
    query_id
        Which query's hits to draw (the ``query`` column).
    ncols
        Tiles per row.
    tile_inches
        Size of each tile in the figure.
    remap
        Path remap for moved slide archives (as in :func:`mmpath.io.read_tiles`).
    title
        Figure title.
    save
        Write a PNG here (atomically); a ``.html`` path writes a small self-contained page
        instead (inline images, no network).

    Returns
    -------
    The matplotlib Figure.

    Example
    -------
    >>> hits = idx.search_image(tiles[:1], k=9, drop_neighbours=0)
    >>> mm.pl.gallery(hits, idx, query=tiles[:1], save="gallery.png")
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if "query" in hits:
        hits = hits[hits["query"] == query_id]
    if len(hits) == 0:
        raise DataError(f"no hits for query {query_id} to draw")
    pixels = _hit_pixels(hits, source, remap)
    qpix = _query_pixels(query, remap)
    panels = ([("query", qpix)] if qpix is not None else []) + [
        (f"#{int(r['rank'])}  {r['score']:.3f}\n{_label(r)}" if "rank" in hits else _label(r), px)
        for (_, r), px in zip(hits.iterrows(), pixels, strict=False)
    ]
    if qpix is not None and hasattr(query, "obs"):
        qrow = query.obs.iloc[0]
        panels[0] = (f"query\n{_label(qrow)}", qpix)
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * tile_inches, nrows * (tile_inches + 0.6)),
        dpi=100,
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (label, px) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(px)
        ax.set_title(label, fontsize=7)
        if label.startswith("query"):
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("tab:red")
                spine.set_linewidth(3)
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    if save is not None:
        if Path(save).suffix.lower() in (".html", ".htm"):
            _write_html(panels, title, Path(save))
        else:
            with atomic_path(Path(save)) as tmp:
                fig.savefig(tmp, format="png")
        plt.close(fig)
    return fig


def _write_html(panels, title: str | None, path: Path) -> None:
    """A small self-contained page: each panel an inline PNG with its label (no network)."""
    import base64
    import html
    import io

    from PIL import Image

    cells = []
    for label, px in panels:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(px, dtype=np.uint8)).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        cls = " class='query'" if label.startswith("query") else ""
        text = "<br>".join(html.escape(line) for line in label.splitlines())
        cells.append(
            f"<figure{cls}><img src='data:image/png;base64,{data}' alt='{html.escape(label)}'>"
            f"<figcaption>{text}</figcaption></figure>"
        )
    head = html.escape(title or "search results")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{head}</title><style>body{{font-family:sans-serif;margin:1em}}"
        "figure{display:inline-block;margin:4px;text-align:center;font-size:11px}"
        "img{width:160px;height:160px;image-rendering:pixelated}"
        ".query img{outline:3px solid #d62728}</style></head><body>"
        f"<h3>{head}</h3>{''.join(cells)}</body></html>"
    )
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
