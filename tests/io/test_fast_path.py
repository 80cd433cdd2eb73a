"""The fast path (tifffile tile decode) is the default for TIFF-family slides: proven equal.

Every format the tests can make is read through both readers at every level, with aligned,
non-aligned and edge-tile regions, and must agree pixel for pixel with openslide. Files with
something the fast path does not handle stay with openslide, and the choice is logged.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

import mmpath as mm
from mmpath.datasets import render
from mmpath.datasets.synthetic import default_spec

APERIO = (
    "Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (128x128) Q=90|AppMag = 20|MPP = 0.5"
)


def _image(w: int = 700, h: int = 530, seed: int = 0) -> np.ndarray:
    arr = render(default_spec(w, h, levels=(1,), seed=seed), (0, 0), (w, h))
    noise = np.random.default_rng(seed).integers(0, 30, arr.shape, np.uint8)
    return np.clip(arr.astype(np.int16) - noise, 0, 255).astype(np.uint8)


def _pyramid(path, compression, *, svs: bool, steps=(1, 2, 4), tile=128, **kw):
    arr = _image()
    h, w = arr.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        for i, step in enumerate(steps):
            extra = {"description": APERIO.format(w=w, h=h)} if svs and i == 0 else {}
            if not svs:
                extra = {"resolution": (1e4 / (0.5 * step),) * 2, "resolutionunit": "CENTIMETER"}
                extra["subfiletype"] = 1 if i else 0
            tw.write(
                arr[::step, ::step],
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                metadata=None,
                **extra,
                **kw,
            )
    return path


def _assert_equal_everywhere(path, *, backend="tifffile"):
    o = mm.io.open_slide(path, backend="openslide")
    f = mm.io.open_slide(path)
    assert f.backend == backend
    assert f.level_dimensions[: o.level_count] == o.level_dimensions
    assert f.level_downsamples[: o.level_count] == pytest.approx(o.level_downsamples)
    assert f.mpp == o.mpp and f.vendor == o.vendor
    for level in range(o.level_count):
        ds = o.level_downsamples[level]
        lw, lh = o.level_dimensions[level]
        cases = [
            ((0, 0), (lw, lh)),  # the whole level
            ((0, 0), (128, 128)),  # one aligned tile
            ((37, 91), (min(150, lw - 37), min(97, lh - 91))),  # non-aligned, across tiles
            ((lw - 29, lh - 13), (29, 13)),  # the last (partial) edge tile
        ]
        for (lx, ly), size in cases:
            loc = (int(round(lx * ds)), int(round(ly * ds)))
            a, b = f.read_region(loc, level, size), o.read_region(loc, level, size)
            if ds == int(ds):
                np.testing.assert_array_equal(a, b, err_msg=f"level {level} at {loc} {size}")
            else:
                # A non-integer downsample (here 530 / 133): openslide paints the region at
                # the fractional offset loc / ds (a sub-pixel blend); we take the nearest
                # pixel. Same pixels, up to that blend.
                d = np.abs(a.astype(int) - b)
                assert d.mean() < 2.0 and np.median(d) <= 1, (level, loc, size, d.mean())
    return f


@pytest.mark.parametrize(
    ("compression", "svs"),
    [("jpeg", False), ("zlib", False), ("jpeg", True), (33005, True)],
    ids=["generic-jpeg", "generic-deflate", "svs-jpeg", "svs-jpeg2000"],
)
def test_fast_path_equals_openslide(tmp_path, compression, svs):
    f = _assert_equal_everywhere(_pyramid(tmp_path / "s.svs", compression, svs=svs))
    assert f.vendor == ("aperio" if svs else "generic-tiff")
    assert f.mpp == pytest.approx(0.5) and f.mpp_source == "metadata"
    assert f.provenance()["backend"] == "tifffile"


def test_fast_path_on_the_real_svs(sample_slide):
    f = _assert_equal_everywhere(sample_slide.path)
    assert f.properties["openslide.objective-power"] == "20"


def test_ome_tiff_with_subifds(tmp_path):
    arr = _image()
    path = tmp_path / "s.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            arr,
            tile=(128, 128),
            photometric="rgb",
            compression="zlib",
            subifds=1,
            metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        tw.write(
            arr[::2, ::2], tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1
        )
    f = _assert_equal_everywhere(path)
    assert f.level_count == 2  # openslide sees one level; tifffile the SubIFD too
    np.testing.assert_array_equal(f.read_region((0, 0), 1, (350, 265)), arr[::2, ::2])


def test_refusals_stay_with_openslide_and_are_logged(tmp_path, caplog):
    # YCbCr JPEG 2000 (Aperio 33003) decodes to other colours in the two readers.
    path = _pyramid(tmp_path / "ycc.svs", 33003, svs=True, steps=(1,))
    with caplog.at_level(logging.INFO, logger="mmpath.io"):
        s = mm.io.open_slide(path)
    assert s.backend == "openslide"
    assert "compression 33003" in caplog.text and "reading with openslide" in caplog.text
    # A missing tile (byte count 0): openslide draws it, the fast path does not guess.
    arr = _image(256, 256)
    path = tmp_path / "hole.tif"
    tifffile.imwrite(path, arr, tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[1] = 0
        tag.overwrite(counts)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmpath.io"):
        assert mm.io.open_slide(path).backend == "openslide"
    assert "missing tiles" in caplog.text
    # A 16-bit grey TIFF: not 8-bit, openslide's view is kept.
    path = tmp_path / "g16.tif"
    tifffile.imwrite(path, (arr[..., 0].astype(np.uint16) * 257), tile=(64, 64))
    assert mm.io.open_slide(path).backend == "openslide"


def test_default_read_tiles_matches_openslide(tmp_path):
    path = _pyramid(tmp_path / "t.svs", "jpeg", svs=True)
    fast = mm.io.open_slide(path)
    tiles = mm.pp.tile(fast, size=64, mpp=1.0, min_tissue=0.0)
    a = mm.io.read_tiles(fast, tiles)
    b = mm.io.read_tiles(mm.io.open_slide(path, backend="openslide"), tiles)
    assert a.shape[0] == tiles.n_obs > 10
    np.testing.assert_array_equal(a, b)
    # reopened from provenance: still the fast path, still openslide's mpp
    again = mm.io.open_slide_from(tiles)
    assert again.backend == "tifffile" and again.mpp == pytest.approx(0.5)
