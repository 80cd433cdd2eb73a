"""Tile labels from polygon annotations, by overlap.

Each tile is the square its row covers in level-0 pixels (``x``, ``y`` and the tiling's
``size0``). For every label, the polygons of that label are merged (so overlapping shapes
count once) and the covered fraction of each tile is computed exactly with shapely; an
``STRtree`` restricts the intersections to tiles whose boxes touch a polygon, so the cost
grows with the annotated area, not with the number of tiles times the number of polygons.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import AnnotationError, DataError
from mmpath.io import _prov

log = logging.getLogger(__name__)

__all__ = ["annotate_tiles"]


def _label_fractions(boxes: np.ndarray, geom, tile_area: float) -> np.ndarray:
    """Fraction of each box covered by ``geom`` (a Polygon/MultiPolygon of disjoint parts)."""
    import shapely

    parts = np.asarray(shapely.get_parts(geom))
    frac = np.zeros(len(boxes))
    if not len(parts) or not len(boxes):
        return frac
    tree = shapely.STRtree(parts)
    box_idx, part_idx = tree.query(boxes, predicate="intersects")
    if box_idx.size:
        areas = shapely.area(shapely.intersection(boxes[box_idx], parts[part_idx]))
        np.add.at(frac, box_idx, areas)
    return np.clip(frac / tile_area, 0.0, 1.0)


def annotate_tiles(
    tiles,
    annotations,
    *,
    key_added: str = K.ANNOTATION,
    min_overlap: float = 0.5,
    fractions: bool = False,
    slide_id: str | None = None,
) -> None:
    """Label each tile with the annotation that covers most of it.

    Parameters
    ----------
    tiles
        A tile table from :func:`mmpath.pp.tile` (modified in place).
    annotations
        :class:`mmpath.io.Annotations` in the slide's level-0 pixels
        (:func:`mmpath.io.read_annotations`).
    key_added
        obs column to write: a categorical of labels, missing (NaN) where no label covers at
        least ``min_overlap`` of the tile.
    min_overlap
        Minimum covered fraction of a tile (0-1] for it to take a label.
    fractions
        Also write each label's covered fraction as obs ``"{key_added}_frac_{label}"``.
    slide_id
        Which slide of a cohort table the annotations belong to; rows of other slides stay
        missing. May be omitted for a one-slide table.

    Returns
    -------
    ``None``; writes ``obs[key_added]`` (and the fraction columns).

    Example
    -------
    >>> ann = mm.io.read_annotations("slide.geojson", slide=slide)
    >>> mm.pp.annotate_tiles(tiles, ann, min_overlap=0.5, fractions=True)
    >>> tiles.obs["annotation"].value_counts()
    """
    import shapely

    if not 0.0 < min_overlap <= 1.0:
        raise AnnotationError(f"min_overlap must be within (0, 1], got {min_overlap}")
    if not len(annotations):
        raise AnnotationError("the annotations hold no polygons")
    ids = _prov.slide_ids(tiles) if tiles.n_obs else list(_prov.root(tiles)[K.UNS_SLIDES])
    if slide_id is None:
        if len(ids) > 1:
            raise DataError(
                f"the table holds {len(ids)} slides; pass slide_id= for the annotated slide"
            )
        slide_id = ids[0] if ids else None
    elif slide_id not in ids:
        raise DataError(f"slide {slide_id!r} is not in this table (slides: {ids[:5]})")

    labels = annotations.labels
    n = tiles.n_obs
    frac = np.zeros((n, len(labels)))
    if slide_id is not None and n:
        rows = np.flatnonzero(tiles.obs[K.SLIDE_ID].astype(str).to_numpy() == slide_id)
        size0 = float(_prov.tiling(tiles, slide_id)["size0"])
        x = tiles.obs[K.X].to_numpy(np.float64)[rows]
        y = tiles.obs[K.Y].to_numpy(np.float64)[rows]
        boxes = shapely.box(x, y, x + size0, y + size0)
        for j, label in enumerate(labels):
            frac[rows, j] = _label_fractions(boxes, annotations.geometry(label), size0 * size0)

    best = frac.argmax(axis=1) if len(labels) else np.zeros(n, int)
    best_frac = frac[np.arange(n), best] if n else np.zeros(0)
    codes = np.where(best_frac >= min_overlap - 1e-12, best, -1)
    tiles.obs[key_added] = pd.Categorical.from_codes(codes, categories=labels)
    if fractions:
        for j, label in enumerate(labels):
            tiles.obs[f"{key_added}_frac_{label}"] = frac[:, j].astype(np.float32)
    runs = _prov.root(tiles).setdefault(K.UNS_RUNS, {})
    runs[f"annotate_tiles:{key_added}"] = {
        "source": annotations.source or "",
        "slide_id": slide_id or "",
        "labels": list(labels),
        "min_overlap": float(min_overlap),
    }
    log.info(
        "%s: %d of %d tiles labelled from %d polygons",
        key_added,
        int((codes >= 0).sum()),
        n,
        len(annotations),
    )
