"""Polygon annotations: QuPath GeoJSON and ASAP XML, as labelled shapely geometries.

Both formats store polygons in level-0 pixel coordinates, so an :class:`Annotations` object
is simply a list of ``(label, geometry)`` pairs in level-0 pixels, where each geometry is a
shapely ``Polygon`` or ``MultiPolygon`` (holes kept). From there:

* :func:`mmpath.pp.annotate_tiles` labels the rows of a tile table by overlap;
* :meth:`Annotations.to_mask` rasterises the polygons at any resolution.

Labels. QuPath: ``properties.classification.name`` (``names`` joined with ``": "`` for
derived classes), else ``properties.name``. ASAP: the ``PartOfGroup`` attribute. A shape
without either gets :data:`UNLABELLED`.

Self-intersecting polygons (a common drawing slip) are repaired with ``shapely.make_valid``
and keep their polygonal parts; points and lines are skipped with a log message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.errors import AnnotationError

log = logging.getLogger(__name__)

__all__ = ["Annotations", "read_annotations", "UNLABELLED"]

UNLABELLED = "unlabelled"
# A polygon may overhang the slide edge by this fraction of the slide's side (drawing at the
# border); beyond it, the annotations belong to another slide or another coordinate system.
EDGE_SLACK = 0.01
_ASAP_POLYGON_TYPES = {"polygon", "spline", "rectangle"}


class Annotations:
    """Labelled polygons in level-0 pixel coordinates.

    Parameters
    ----------
    shapes
        ``(label, geometry)`` pairs; geometries are shapely Polygons or MultiPolygons.
    source
        File the shapes came from, for messages and provenance.

    Example
    -------
    >>> ann = mm.io.read_annotations("slide.geojson", slide=slide)
    >>> ann.labels
    ['Stroma', 'Tumor']
    >>> mask, values = ann.to_mask(slide, mpp=8.0)
    """

    def __init__(self, shapes: Sequence[tuple[str, Any]], *, source: str | None = None) -> None:
        from shapely.geometry import MultiPolygon, Polygon

        checked = []
        for label, geom in shapes:
            if not isinstance(geom, (Polygon, MultiPolygon)):
                raise AnnotationError(
                    f"annotation {label!r} is a {geom.geom_type}, not a Polygon or MultiPolygon"
                )
            if not geom.is_empty:
                checked.append((str(label), geom))
        self.shapes: list[tuple[str, Any]] = checked
        self.source = source

    # -- container ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.shapes)

    def __getitem__(self, i: int) -> tuple[str, Any]:
        return self.shapes[i]

    def __repr__(self) -> str:
        src = f" from {Path(self.source).name!r}" if self.source else ""
        return f"<Annotations{src}: {len(self)} shapes, labels {self.labels}>"

    @property
    def labels(self) -> list[str]:
        """Distinct labels, in order of first appearance."""
        return list(dict.fromkeys(label for label, _ in self.shapes))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of all shapes in level-0 pixels."""
        if not self.shapes:
            return (0.0, 0.0, 0.0, 0.0)
        b = np.array([g.bounds for _, g in self.shapes])
        return (
            float(b[:, 0].min()),
            float(b[:, 1].min()),
            float(b[:, 2].max()),
            float(b[:, 3].max()),
        )

    def geometry(self, label: str):
        """The union of every shape with ``label`` (overlaps counted once)."""
        import shapely

        parts = [g for lab, g in self.shapes if lab == label]
        if not parts:
            raise AnnotationError(f"no annotation has label {label!r}; labels: {self.labels}")
        return shapely.union_all(parts)

    def area(self, label: str | None = None) -> float:
        """Area in level-0 pixels² of ``label`` (of all labels' union when ``None``)."""
        import shapely

        if label is not None:
            return float(self.geometry(label).area)
        return float(shapely.union_all([g for _, g in self.shapes]).area) if self.shapes else 0.0

    # -- checks and rasters -------------------------------------------------------------------
    def check_within(self, slide) -> None:
        """Raise :class:`AnnotationError` unless every shape lies on ``slide``.

        Shapes may overhang the edge by 1% of the slide's side (they are drawn up to the
        border); further out, or entirely outside, means a mismatched slide or coordinates.
        """
        W, H = slide.dimensions
        sx, sy = EDGE_SLACK * W, EDGE_SLACK * H
        for i, (label, geom) in enumerate(self.shapes):
            x0, y0, x1, y1 = geom.bounds
            outside = x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H
            if outside or x0 < -sx or y0 < -sy or x1 > W + sx or y1 > H + sy:
                raise AnnotationError(
                    f"annotation #{i} ({label!r}) spans x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} "
                    f"but slide {slide.slide_id!r} is {W}x{H} px: the annotations belong to "
                    "another slide or are not in level-0 pixels (re-export them for this slide)"
                )

    def to_mask(
        self,
        slide,
        *,
        mpp: float | None = None,
        downsample: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Rasterise the shapes into an integer label mask covering the whole slide.

        A mask pixel takes a label's value when its centre lies inside one of the label's
        polygons (holes excluded). Where labels overlap, the later one in ``labels`` wins.

        Parameters
        ----------
        slide
            The slide the annotations belong to (gives the extent, and the mpp).
        mpp
            Resolution of the mask in µm/px (needs the slide's mpp).
        downsample
            Level-0 pixels per mask pixel, instead of ``mpp``. With neither, the longer
            side of the mask is 2048 px.
        labels
            Labels to draw, in painting order; all labels (in order of appearance) by default.

        Returns
        -------
        ``(mask, values)``: ``mask`` is ``uint8`` (``uint16`` beyond 255 labels) of shape
        ``(ceil(H / downsample), ceil(W / downsample))`` with 0 = background, and
        ``values`` maps each label to its value 1..k.

        Example
        -------
        >>> mask, values = ann.to_mask(slide, mpp=2.0, labels=["Tumor"])
        >>> tumor_px = (mask == values["Tumor"]).sum()
        """
        from skimage.draw import polygon as fill_polygon

        W, H = slide.dimensions
        if mpp is not None and downsample is not None:
            raise AnnotationError("give either mpp= or downsample= to to_mask, not both")
        if mpp is not None:
            if not mpp > 0:
                raise AnnotationError(f"mpp must be > 0 µm/px, got {mpp}")
            ds = float(mpp) / slide.require_mpp()
        elif downsample is not None:
            if not downsample > 0:
                raise AnnotationError(f"downsample must be > 0, got {downsample}")
            ds = float(downsample)
        else:
            ds = max(1.0, max(W, H) / 2048)
        labels = list(self.labels if labels is None else labels)
        unknown = [lab for lab in labels if lab not in self.labels]
        if unknown:
            raise AnnotationError(f"unknown label(s) {unknown}; the annotations have {self.labels}")
        values = {lab: i + 1 for i, lab in enumerate(labels)}
        shape = (max(1, math.ceil(H / ds)), max(1, math.ceil(W / ds)))
        mask = np.zeros(shape, np.uint8 if len(labels) < 256 else np.uint16)
        for label in labels:
            value = values[label]
            for _, geom in (s for s in self.shapes if s[0] == label):
                for poly in _polygons(geom):
                    _paint(mask, poly, ds, value, fill_polygon)
        return mask, values


def _paint(mask: np.ndarray, poly, ds: float, value: int, fill_polygon) -> None:
    """Paint ``poly`` (holes left untouched) into ``mask`` by pixel-centre sampling."""

    def rc(ring) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(ring.coords)
        # pixel (r, c) has its centre at level-0 ((c + 0.5) * ds, (r + 0.5) * ds)
        return xy[:, 1] / ds - 0.5, xy[:, 0] / ds - 0.5

    r, c = rc(poly.exterior)
    if r.size < 3:
        return
    r0 = max(0, int(math.floor(r.min())))
    c0 = max(0, int(math.floor(c.min())))
    r1 = min(mask.shape[0], int(math.ceil(r.max())) + 1)
    c1 = min(mask.shape[1], int(math.ceil(c.max())) + 1)
    if r1 <= r0 or c1 <= c0:
        return
    inside = np.zeros((r1 - r0, c1 - c0), bool)
    rr, cc = fill_polygon(r - r0, c - c0, inside.shape)
    inside[rr, cc] = True
    for hole in poly.interiors:
        hr, hc = rc(hole)
        rr, cc = fill_polygon(hr - r0, hc - c0, inside.shape)
        inside[rr, cc] = False
    mask[r0:r1, c0:c1][inside] = value


def _polygons(geom) -> list:
    """The Polygon parts of a Polygon, MultiPolygon or GeometryCollection."""
    if geom.geom_type == "Polygon":
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons(g)]
    return []


def _as_polygonal(geom, what: str):
    """``geom`` as a valid Polygon/MultiPolygon, or None when it has no area."""
    import shapely
    from shapely.geometry import MultiPolygon

    if geom is None or geom.is_empty:
        return None
    if not geom.is_valid:
        log.info("%s: repairing an invalid (self-intersecting) polygon", what)
        geom = shapely.make_valid(geom)
    parts = [p for p in _polygons(geom) if p.area > 0]
    if not parts:
        log.info("%s: skipping a %s (no area)", what, geom.geom_type)
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


# -- QuPath GeoJSON ---------------------------------------------------------------------------
def _qupath_label(props: dict | None) -> str:
    props = props or {}
    cls = props.get("classification")
    if isinstance(cls, dict):
        if cls.get("name"):
            return str(cls["name"])
        if cls.get("names"):
            return ": ".join(map(str, cls["names"]))
    elif isinstance(cls, str) and cls:
        return cls
    if props.get("name"):
        return str(props["name"])
    return UNLABELLED


def _parse_geojson(text: str, where: str) -> list[tuple[str, Any]]:
    from shapely.geometry import shape

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"cannot parse {where} as GeoJSON ({err.msg} at line {err.lineno}); re-export it "
            "from QuPath (File > Export objects as GeoJSON)"
        ) from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict):
        features = [data]  # one Feature, or a bare geometry
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(f"{where}: expected a GeoJSON FeatureCollection or list of features")
    shapes = []
    for i, feat in enumerate(features):
        if not isinstance(feat, dict):
            raise AnnotationError(f"{where}: feature #{i} is not a JSON object")
        if feat.get("type") == "Feature":
            geometry, label = feat.get("geometry"), _qupath_label(feat.get("properties"))
        else:
            geometry, label = feat, UNLABELLED
        if not geometry:
            continue
        try:
            geom = shape(geometry)
        except Exception as err:  # noqa: BLE001 - shapely raises several types for bad rings
            raise AnnotationError(
                f"{where}: feature #{i} ({label!r}) has an unreadable geometry ({err})"
            ) from None
        geom = _as_polygonal(geom, f"{where} feature #{i}")
        if geom is not None:
            shapes.append((label, geom))
    return shapes


# -- ASAP XML ---------------------------------------------------------------------------------
def _parse_asap(text: str, where: str) -> list[tuple[str, Any]]:
    from shapely.geometry import Polygon

    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise AnnotationError(
            f"cannot parse {where} as ASAP XML ({err}); re-export it from ASAP"
        ) from None
    shapes = []
    for i, ann in enumerate(root.iter("Annotation")):
        kind = (ann.get("Type") or "Polygon").lower()
        group = ann.get("PartOfGroup")
        label = group if group and group != "None" else UNLABELLED
        if kind not in _ASAP_POLYGON_TYPES:
            log.info("%s annotation #%d: skipping a %s (no area)", where, i, kind)
            continue
        coords = []
        for c in ann.iter("Coordinate"):
            try:
                order = int(float(c.get("Order", len(coords))))
                coords.append((order, float(c.get("X")), float(c.get("Y"))))
            except (TypeError, ValueError):
                raise AnnotationError(
                    f"{where}: annotation #{i} ({label!r}) has a Coordinate without numeric X/Y"
                ) from None
        coords.sort(key=lambda t: t[0])
        if len(coords) < 3:
            raise AnnotationError(
                f"{where}: annotation #{i} ({label!r}) has {len(coords)} point(s); a polygon "
                "needs at least 3"
            )
        geom = _as_polygonal(Polygon([(x, y) for _, x, y in coords]), f"{where} #{i}")
        if geom is not None:
            shapes.append((label, geom))
    return shapes


def read_annotations(path: str | os.PathLike[str], *, slide=None) -> Annotations:
    """Read polygon annotations from a QuPath GeoJSON export or an ASAP XML file.

    Parameters
    ----------
    path
        ``.geojson``/``.json`` (QuPath: a FeatureCollection or a list of features with
        Polygon/MultiPolygon geometries) or ``.xml`` (ASAP). Other suffixes are sniffed.
    slide
        When given, every polygon must lie on this slide (a 1% overhang at the edge is
        tolerated); otherwise an :class:`~mmpath.errors.AnnotationError` is raised.

    Returns
    -------
    :class:`Annotations` in level-0 pixels.

    Example
    -------
    >>> ann = mm.io.read_annotations("CMU-1.geojson", slide=slide)
    >>> mm.pp.annotate_tiles(tiles, ann)
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise AnnotationError(f"annotation file {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise AnnotationError(f"{str(p)!r} is a directory; pass the annotation file itself")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AnnotationError(
            f"{str(p)!r} is not a text file; expected QuPath GeoJSON or ASAP XML"
        ) from None
    where = repr(str(p))
    head = text.lstrip()[:1]
    suffix = p.suffix.lower()
    if suffix == ".xml" or (suffix not in (".json", ".geojson") and head == "<"):
        shapes = _parse_asap(text, where)
    elif suffix in (".json", ".geojson") or head in ("{", "["):
        shapes = _parse_geojson(text, where)
    else:
        raise AnnotationError(
            f"cannot tell the format of {where}; expected QuPath GeoJSON (.geojson) or ASAP "
            "XML (.xml)"
        )
    if not shapes:
        raise AnnotationError(
            f"{where} holds no polygons (points and lines are not used); export area "
            "annotations (polygons, rectangles, ellipses, brush) instead"
        )
    ann = Annotations(shapes, source=str(p))
    if slide is not None:
        ann.check_within(slide)
    log.info("%s: %d polygons, labels %s", where, len(ann), ann.labels)
    return ann
