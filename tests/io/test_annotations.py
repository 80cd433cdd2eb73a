"""Annotations: QuPath GeoJSON / ASAP XML reading, tile labels by overlap, masks at any mpp.

Every geometry here is chosen so the answer is known exactly: the tiles are 100 px squares on
a 1000 x 800 px slide, and the polygons are drawn on the tile grid (or at known fractions).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import AnnotationError, DataError

W, H, T = 1000, 800, 100


def feature(geometry: dict, *, cls: str | None = None, name: str | None = None) -> dict:
    props: dict = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": props}


def rect(x0, y0, x1, y1) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write_geojson(path, features, *, collection: bool = True):
    data = {"type": "FeatureCollection", "features": features} if collection else features
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# Tumor: 3x2 full tiles. Stroma: 2 full tiles + one half tile. Necrosis: a 3x3 block with
# a one-tile hole. Fat: a MultiPolygon of two 1-tile squares, one of them at 40% of a tile.
QUPATH = [
    feature({"type": "Polygon", "coordinates": [rect(0, 0, 300, 200)]}, cls="Tumor"),
    feature({"type": "Polygon", "coordinates": [rect(500, 0, 750, 100)]}, name="Stroma"),
    feature(
        {"type": "Polygon", "coordinates": [rect(400, 400, 700, 700), rect(500, 500, 600, 600)]},
        cls="Necrosis",
    ),
    feature(
        {
            "type": "MultiPolygon",
            "coordinates": [[rect(0, 600, 100, 700)], [rect(900, 700, 1000, 740)]],
        },
        cls="Fat",
    ),
    feature({"type": "Point", "coordinates": [10, 10]}, cls="Cell"),  # skipped: no area
]


@pytest.fixture()
def slide():
    return mm.io.ArraySlide(np.full((H, W, 3), 255, np.uint8), mpp=0.5, slide_id="s1")


@pytest.fixture()
def tiles(slide):
    t = mm.pp.tile(slide, T, min_tissue=0.0)
    assert t.n_obs == (W // T) * (H // T)
    return t


@pytest.fixture()
def qupath_file(tmp_path):
    return write_geojson(tmp_path / "ann otations é.geojson", QUPATH)


def label_at(tiles, x, y):
    row = tiles.obs[(tiles.obs[K.X] == x) & (tiles.obs[K.Y] == y)]
    assert len(row) == 1
    value = row[K.ANNOTATION].iloc[0]
    return None if pd.isna(value) else value


def test_read_qupath_geojson_labels_and_geometry(qupath_file, slide):
    ann = mm.io.read_annotations(qupath_file, slide=slide)
    assert len(ann) == 4
    assert ann.labels == ["Tumor", "Stroma", "Necrosis", "Fat"]
    assert ann.area("Tumor") == 300 * 200
    assert ann.area("Necrosis") == 300 * 300 - 100 * 100  # the hole is kept
    assert ann.area("Fat") == 100 * 100 + 100 * 40
    assert isinstance(ann.geometry("Fat"), MultiPolygon)
    assert ann.bounds == (0.0, 0.0, 1000.0, 740.0)


def test_read_geojson_list_of_features_and_derived_class(tmp_path):
    feats = [
        feature({"type": "Polygon", "coordinates": [rect(0, 0, 10, 10)]}),
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [rect(0, 0, 5, 5)]},
            "properties": {"classification": {"names": ["Tumor", "Positive"]}},
        },
    ]
    ann = mm.io.read_annotations(write_geojson(tmp_path / "a.json", feats, collection=False))
    assert ann.labels == [mm.io.annotations.UNLABELLED, "Tumor: Positive"]


def test_self_intersecting_polygon_is_repaired(tmp_path):
    bowtie = [[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]
    path = write_geojson(
        tmp_path / "a.geojson", [feature({"type": "Polygon", "coordinates": [bowtie]}, cls="T")]
    )
    ann = mm.io.read_annotations(path)
    assert ann[0][1].is_valid
    assert ann.area("T") == pytest.approx(5000.0)  # two triangles of 2500 px²


def test_read_asap_xml(tmp_path, slide):
    xml = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="300" Y="200" />
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="300" Y="0" />
        <Coordinate Order="3" X="0" Y="200" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Rectangle" PartOfGroup="None" Color="#000000">
      <Coordinates>
        <Coordinate Order="0" X="500" Y="500" /><Coordinate Order="1" X="600" Y="500" />
        <Coordinate Order="2" X="600" Y="600" /><Coordinate Order="3" X="500" Y="600" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Dot" Type="Dot" PartOfGroup="tumor"><Coordinates>
      <Coordinate Order="0" X="1" Y="1" /></Coordinates></Annotation>
  </Annotations>
  <AnnotationGroups><Group Name="tumor" PartOfGroup="None" Color="#F4FA58" /></AnnotationGroups>
</ASAP_Annotations>"""
    path = tmp_path / "asap.xml"
    path.write_text(xml)
    ann = mm.io.read_annotations(path, slide=slide)
    assert ann.labels == ["tumor", mm.io.annotations.UNLABELLED]
    # Coordinates are sorted by Order: a proper rectangle, not a bow-tie.
    assert ann.area("tumor") == 300 * 200
    assert ann.area(mm.io.annotations.UNLABELLED) == 100 * 100


def test_annotate_tiles_by_overlap(qupath_file, slide, tiles):
    ann = mm.io.read_annotations(qupath_file, slide=slide)
    mm.pp.annotate_tiles(tiles, ann, fractions=True)
    col = tiles.obs[K.ANNOTATION]
    assert list(col.cat.categories) == ["Tumor", "Stroma", "Necrosis", "Fat"]
    counts = col.value_counts()
    assert counts["Tumor"] == 6
    assert counts["Stroma"] == 3  # two full tiles and the half tile (0.5 >= min_overlap)
    assert counts["Necrosis"] == 8  # 3x3 block minus the hole
    assert counts["Fat"] == 1  # the 40% tile stays unlabelled
    assert col.isna().sum() == tiles.n_obs - 18
    assert label_at(tiles, 700, 0) == "Stroma"
    assert label_at(tiles, 500, 500) is None  # the hole
    assert label_at(tiles, 900, 700) is None
    frac = tiles.obs
    row = (frac[K.X] == 700) & (frac[K.Y] == 0)
    assert frac.loc[row, "annotation_frac_Stroma"].item() == pytest.approx(0.5)
    row = (frac[K.X] == 900) & (frac[K.Y] == 700)
    assert frac.loc[row, "annotation_frac_Fat"].item() == pytest.approx(0.4)
    # Fractions sum to the covered area of each label, in tile units.
    assert frac["annotation_frac_Necrosis"].sum() * T * T == pytest.approx(80_000)

    mm.pp.annotate_tiles(tiles, ann, key_added="strict", min_overlap=0.6)
    assert tiles.obs["strict"].value_counts()["Stroma"] == 2


def test_annotate_tiles_largest_overlap_wins(slide, tiles):
    ann = mm.io.Annotations(
        [("A", box(0, 0, 30, 100)), ("B", box(30, 0, 100, 100)), ("A", box(0, 0, 20, 100))]
    )  # overlapping A counts once
    mm.pp.annotate_tiles(tiles, ann, min_overlap=0.1, fractions=True)
    assert label_at(tiles, 0, 0) == "B"
    first = tiles.obs.iloc[0]
    assert first["annotation_frac_A"] == pytest.approx(0.3)
    assert first["annotation_frac_B"] == pytest.approx(0.7)


def test_annotate_tiles_matches_brute_force(slide):
    tiles = mm.pp.tile(slide, 64, min_tissue=0.0, stride=40)
    rng = np.random.default_rng(0)
    shapes = []
    for i in range(12):
        cx, cy, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(20, 150)
        shapes.append((f"L{i % 3}", shapely.Point(cx, cy).buffer(r).intersection(box(0, 0, W, H))))
    ann = mm.io.Annotations(shapes)
    mm.pp.annotate_tiles(tiles, ann, fractions=True)
    size0 = 64
    for label in ann.labels:
        geom = ann.geometry(label)
        expected = [
            geom.intersection(box(x, y, x + size0, y + size0)).area / size0**2
            for x, y in zip(tiles.obs[K.X], tiles.obs[K.Y], strict=True)
        ]
        got = tiles.obs[f"annotation_frac_{label}"].to_numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_annotate_tiles_on_synthetic_pyramid(synthetic_slide, synthetic_spec):
    """Annotate the synthetic slide's rectangle region at 1 µm/px: labels match the geometry."""
    x0, y0, x1, y1 = next(r.params for r in synthetic_spec.regions if r.kind == "rect")
    ann = mm.io.Annotations([("rect", box(x0, y0, x1, y1))])
    ann.check_within(synthetic_slide)
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=1.0, min_tissue=0.0)
    mm.pp.annotate_tiles(tiles, ann)
    size0 = mm.io._prov.tiling(tiles, synthetic_slide.slide_id)["size0"]
    assert size0 == 128
    xs, ys = tiles.obs[K.X].to_numpy(), tiles.obs[K.Y].to_numpy()
    cover_x = np.clip(np.minimum(xs + size0, x1) - np.maximum(xs, x0), 0, None)
    cover_y = np.clip(np.minimum(ys + size0, y1) - np.maximum(ys, y0), 0, None)
    expected = cover_x * cover_y / size0**2 >= 0.5
    got = (tiles.obs[K.ANNOTATION] == "rect").to_numpy()
    assert got.sum() > 20
    np.testing.assert_array_equal(got, expected)


def test_annotate_tiles_cohort_and_h5ad_roundtrip(slide, tmp_path):
    other = mm.io.ArraySlide(np.full((H, W, 3), 255, np.uint8), mpp=0.5, slide_id="s2")
    cohort = mm.io.concat(
        [mm.pp.tile(slide, T, min_tissue=0.0), mm.pp.tile(other, T, min_tissue=0.0)]
    )
    ann = mm.io.Annotations([("Tumor", box(0, 0, 300, 200))], source="a.geojson")
    with pytest.raises(DataError, match="slide_id="):
        mm.pp.annotate_tiles(cohort, ann)
    mm.pp.annotate_tiles(cohort, ann, slide_id="s2")
    by_slide = cohort.obs.groupby(K.SLIDE_ID, observed=True)[K.ANNOTATION].count()
    assert by_slide["s1"] == 0 and by_slide["s2"] == 6
    path = mm.io.write_h5ad(cohort, tmp_path / "cohort.h5ad")
    back = mm.io.read_h5ad(path)
    pd.testing.assert_series_equal(back.obs[K.ANNOTATION], cohort.obs[K.ANNOTATION])
    assert back.uns[K.UNS][K.UNS_RUNS]["annotate_tiles:annotation"]["source"] == "a.geojson"


def test_to_mask_areas_match_geometry(qupath_file, slide):
    ann = mm.io.read_annotations(qupath_file, slide=slide)
    mask, values = ann.to_mask(slide, downsample=1)
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    assert values == {"Tumor": 1, "Stroma": 2, "Necrosis": 3, "Fat": 4}
    for label, value in values.items():
        assert (mask == value).sum() == ann.area(label), label  # exact on the pixel grid
    assert mask[550, 550] == 0  # the hole
    assert mask[0, 0] == values["Tumor"] and mask[199, 299] == 1 and mask[200, 300] == 0


@pytest.mark.parametrize("mpp", [1.0, 2.0, 3.7])
def test_to_mask_at_any_mpp_within_a_pixel(slide, mpp):
    circle = shapely.Point(420.3, 317.9).buffer(190.0, quad_segs=64)
    tri = Polygon([(600, 100), (980, 150), (700, 700)])
    ann = mm.io.Annotations([("circle", circle), ("tri", tri)])
    mask, values = ann.to_mask(slide, mpp=mpp, labels=["tri", "circle"])
    ds = mpp / slide.mpp
    assert mask.shape == (math.ceil(H / ds), math.ceil(W / ds))
    assert values == {"tri": 1, "circle": 2}
    for geom, value in ((circle, 2), (tri, 1)):
        area_px = (mask == value).sum() * ds * ds
        # rasterising errs by at most about half a mask pixel along the boundary
        assert abs(area_px - geom.area) <= 0.5 * geom.length * ds, (mpp, value)


def test_to_mask_overlap_order_and_label_subset(slide):
    ann = mm.io.Annotations([("A", box(0, 0, 200, 200)), ("B", box(100, 100, 300, 300))])
    mask, values = ann.to_mask(slide, downsample=1, labels=["B", "A"])
    assert values == {"B": 1, "A": 2}
    assert mask[150, 150] == 2  # A painted last wins
    only_b, values = ann.to_mask(slide, downsample=2, labels=["B"])
    assert values == {"B": 1} and only_b.shape == (400, 500)
    assert (only_b == 1).sum() * 4 == 200 * 200
    with pytest.raises(AnnotationError, match="unknown label"):
        ann.to_mask(slide, labels=["C"])
    default, _ = ann.to_mask(slide)  # no resolution: longer side <= 2048 -> level 0 here
    assert default.shape == (H, W)


# -- bad input ---------------------------------------------------------------------------------
def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        mm.io.read_annotations(tmp_path / "nope.geojson")
    with pytest.raises(AnnotationError, match="directory"):
        mm.io.read_annotations(tmp_path)


def test_unparsable_json_and_xml(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(AnnotationError, match="cannot parse .* as GeoJSON"):
        mm.io.read_annotations(bad)
    bad = tmp_path / "bad.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(AnnotationError, match="cannot parse .* as ASAP XML"):
        mm.io.read_annotations(bad)
    bad = tmp_path / "ring.geojson"
    write_geojson(bad, [feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})])
    with pytest.raises(AnnotationError, match="unreadable geometry"):
        mm.io.read_annotations(bad)
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(AnnotationError):
        mm.io.read_annotations(binary)


def test_no_polygons(tmp_path):
    path = write_geojson(
        tmp_path / "points.geojson", [feature({"type": "Point", "coordinates": [1, 2]}, cls="Cell")]
    )
    with pytest.raises(AnnotationError, match="no polygons"):
        mm.io.read_annotations(path)
    empty = tmp_path / "empty.xml"
    empty.write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    with pytest.raises(AnnotationError, match="no polygons"):
        mm.io.read_annotations(empty)


def test_polygons_outside_the_slide(tmp_path, slide):
    far = write_geojson(
        tmp_path / "far.geojson",
        [feature({"type": "Polygon", "coordinates": [rect(5000, 5000, 6000, 6000)]}, cls="T")],
    )
    with pytest.raises(AnnotationError, match="another slide"):
        mm.io.read_annotations(far, slide=slide)
    mm.io.read_annotations(far)  # without a slide there is nothing to check against
    over = write_geojson(
        tmp_path / "over.geojson",
        [feature({"type": "Polygon", "coordinates": [rect(900, 700, 1100, 800)]}, cls="T")],
    )
    with pytest.raises(AnnotationError, match="1100"):
        mm.io.read_annotations(over, slide=slide)
    edge = write_geojson(
        tmp_path / "edge.geojson",
        [feature({"type": "Polygon", "coordinates": [rect(900, 700, 1004, 805)]}, cls="T")],
    )
    assert len(mm.io.read_annotations(edge, slide=slide)) == 1  # a drawing overhang is fine


def test_annotate_tiles_bad_arguments(slide, tiles):
    ann = mm.io.Annotations([("A", box(0, 0, 10, 10))])
    with pytest.raises(AnnotationError, match="min_overlap"):
        mm.pp.annotate_tiles(tiles, ann, min_overlap=0)
    with pytest.raises(AnnotationError, match="no polygons"):
        mm.pp.annotate_tiles(tiles, mm.io.Annotations([]))
    with pytest.raises(AnnotationError, match="not a Polygon"):
        mm.io.Annotations([("A", shapely.Point(0, 0))])


def _wobbly(n, cx, cy, r, seed):
    """A star-shaped outline with ``n`` vertices (a hand-drawn region), valid."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1 + 0.2 * np.sin(5 * t) + 0.05 * rng.standard_normal(n))
    return shapely.Polygon(np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)]).buffer(0)


@pytest.mark.parametrize("stride", [64, 40])
def test_fast_label_fractions_equal_the_direct_overlay(stride):
    """Issue 10 item 8: prepared polygons + inside/outside short-circuit + recursive clipping
    give the same fractions as one exact overlay per tile, on many-vertex polygons with holes,
    several parts, edges lying exactly on tile borders, and overlapping tiles."""
    from mmpath.pp.annotate import _label_fractions, _label_fractions_direct

    size = 64
    g = np.arange(0, 1600, stride)
    xs, ys = np.meshgrid(g, g)
    boxes = shapely.box(xs.ravel(), ys.ravel(), xs.ravel() + size, ys.ravel() + size)
    outline = _wobbly(3000, 800, 800, 560, seed=1)
    hole = _wobbly(600, 700, 800, 120, seed=2)
    aligned = box(128, 1408, 640, 1536)  # edges on the tile grid
    tiny = shapely.Point(1500.5, 100.5).buffer(5)  # inside one tile
    cases = {
        "holed": outline.difference(hole),
        "multi": shapely.union_all([outline.difference(hole), aligned, tiny]),
        "aligned": aligned,
    }
    for name, geom in cases.items():
        fast = _label_fractions(boxes, geom, size * size)
        ref = _label_fractions_direct(boxes, geom, size * size)
        np.testing.assert_allclose(fast, ref, atol=1e-9, err_msg=name)
        assert (fast == 1).sum() > 10, name  # the short-circuit was hit
        if name != "aligned" or stride != size:  # a grid-aligned box crosses no tile
            assert ((fast > 0) & (fast < 1)).sum() > 10, name  # boundary tiles were hit
