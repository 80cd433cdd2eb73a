"""Label-mask writers (the io of ``mm.tl.segment``): paletted PNG, TIFF with resolution tags,
QuPath GeoJSON polygons.

GeoJSON. Each non-background class becomes Features whose geometry is a ``Polygon`` or
``MultiPolygon`` in **level-0 pixel coordinates** (what QuPath and
:func:`mmpath.io.read_annotations` expect), with holes kept, and
``properties = {"objectType": "annotation", "classification": {"name": <class>, "color":
[r, g, b]}}`` (QuPath's own export format). Outlines come from
marching squares on the padded class mask; nesting depth (found with an STR-tree) decides
which rings are shells and which are holes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmpath.io._atomic import atomic_path, atomic_write_text

__all__ = ["palette", "write_mask_png", "write_mask_tiff", "mask_to_features", "write_geojson"]

_BASE_COLOURS = [
    (0, 0, 0),
    (220, 40, 60),
    (40, 160, 80),
    (40, 90, 220),
    (240, 170, 20),
    (150, 60, 200),
    (20, 190, 200),
    (230, 100, 180),
    (120, 120, 120),
    (160, 110, 40),
]


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours; class 0 (background) is black."""
    cols = list(_BASE_COLOURS)
    rng = np.random.default_rng(0)
    while len(cols) < n:
        cols.append(tuple(int(v) for v in rng.integers(30, 230, 3)))
    return cols[:n]


def write_mask_png(mask: np.ndarray, path: str | os.PathLike[str], n_classes: int) -> Path:
    """A paletted PNG whose pixel values are the labels (viewers show class colours)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    flat = [c for rgb in palette(max(n_classes, 1)) for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def write_mask_tiff(mask: np.ndarray, path: str | os.PathLike[str], mpp: float | None) -> Path:
    """A uint8 label TIFF (deflate) whose resolution tags record ``mpp`` (px per cm)."""
    import tifffile

    kwargs = {}
    if mpp:
        px_per_cm = 1e4 / mpp
        kwargs = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(mask, np.uint8), compression="zlib", **kwargs)
    return path


def _class_polygons(binary: np.ndarray, scale: float, min_area: float, simplify: float):
    import shapely
    from shapely.geometry import Polygon
    from skimage import measure

    padded = np.pad(binary.astype(np.uint8), 1)
    rings = []
    for c in measure.find_contours(padded, 0.5):
        if len(c) < 4:
            continue
        # (row, col) of the padded array -> (x, y) pixel-edge coordinates -> level 0
        xy = (c[:, ::-1] - 1 + 0.5) * scale
        poly = Polygon(xy)
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
            if poly.geom_type != "Polygon":
                parts = [g for g in getattr(poly, "geoms", []) if g.geom_type == "Polygon"]
                if not parts:
                    continue
                poly = max(parts, key=lambda g: g.area)
        if poly.area > 0:
            rings.append(Polygon(poly.exterior))
    if not rings:
        return []
    tree = shapely.STRtree(rings)
    points = [r.representative_point() for r in rings]
    depth, parent = [], []
    areas = np.array([r.area for r in rings])
    for i, pt in enumerate(points):
        hits = [int(j) for j in tree.query(pt, predicate="within") if int(j) != i]
        hits = [j for j in hits if areas[j] > areas[i]]
        depth.append(len(hits))
        parent.append(min(hits, key=lambda j: areas[j]) if hits else -1)
    holes: dict[int, list] = {}
    for i, d in enumerate(depth):
        if d % 2 == 1 and parent[i] >= 0:
            holes.setdefault(parent[i], []).append(rings[i].exterior.coords)
    out = []
    for i, d in enumerate(depth):
        if d % 2 == 0:
            poly = Polygon(rings[i].exterior.coords, holes.get(i, []))
            if simplify > 0:
                poly = poly.simplify(simplify * scale, preserve_topology=True)
            if poly.area >= min_area * scale * scale and not poly.is_empty:
                out.append(poly)
    return out


def mask_to_features(
    mask: np.ndarray,
    class_names: Sequence[str],
    *,
    downsample: float = 1.0,
    min_area: float = 4.0,
    simplify: float = 0.5,
    background: int | None = 0,
) -> list[dict]:
    """GeoJSON Features (level-0 coordinates) of every class of a label mask.

    Parameters
    ----------
    mask
        ``(H, W)`` integer labels.
    class_names
        Name of each label value.
    downsample
        Level-0 pixels per mask pixel.
    min_area
        Drop polygons smaller than this many mask pixels.
    simplify
        Douglas-Peucker tolerance in mask pixels (0 keeps every vertex).
    background
        Label value not exported (``None`` exports every class).
    """
    from shapely.geometry import MultiPolygon, mapping

    cols = palette(len(class_names))
    feats = []
    for value, name in enumerate(class_names):
        if value == background:
            continue
        polys = _class_polygons(np.asarray(mask) == value, downsample, min_area, simplify)
        if not polys:
            continue
        geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        feats.append(
            {
                "type": "Feature",
                "geometry": mapping(geom),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": str(name), "color": list(cols[value])},
                },
            }
        )
    return feats


def write_geojson(features: list[dict], path: str | os.PathLike[str]) -> Path:
    """Write a FeatureCollection atomically (QuPath: File > Import objects)."""

    def _lists(obj):
        if isinstance(obj, dict):
            return {k: _lists(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_lists(v) for v in obj]
        return obj

    doc = {"type": "FeatureCollection", "features": _lists(features)}
    path = Path(path)
    atomic_write_text(path, json.dumps(doc))
    return path
