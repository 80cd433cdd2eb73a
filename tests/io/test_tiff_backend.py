"""The tifffile backend: TIFFs openslide declines, misreads (odd tiles) or half sees (SubIFDs)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

import mmpath as mm
from mmpath.datasets import render, write_synthetic_slide
from mmpath.datasets.synthetic import default_spec
from mmpath.errors import SlideError, TileReadError


def _image(h: int = 300, w: int = 420, seed: int = 0) -> np.ndarray:
    """Tissue-like content (so tiling keeps tiles) with random texture (so shifts show)."""
    arr = render(default_spec(w, h, levels=(1,), seed=seed), (0, 0), (w, h))
    noise = np.random.default_rng(seed).integers(0, 24, arr.shape, np.uint8)
    return np.clip(arr.astype(np.int16) - noise, 0, 255).astype(np.uint8)


def _subifd_pyramid(path, arr: np.ndarray, mpp: float = 0.5, tile=(64, 64)):
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            arr,
            tile=tile,
            photometric="rgb",
            subifds=2,
            resolution=res,
            resolutionunit="CENTIMETER",
            compression="zlib",
        )
        for step in (2, 4):
            tw.write(
                arr[::step, ::step], tile=tile, photometric="rgb", subfiletype=1, compression="zlib"
            )
    return path


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_odd_tile_tiff_reads_pixel_identical(tmp_path, compression):
    arr = _image()
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, arr, tile=(48, 80), photometric="rgb", compression=compression)
    s = mm.io.open_slide(path)
    if compression is None:
        # openslide opens it but fails every read ("Invalid tile byte count"): tifffile reads
        with pytest.raises(TileReadError):
            mm.io.open_slide(path, backend="openslide").read_region((0, 0), 0, (16, 16))
        assert s.backend == "tifffile"
    else:  # openslide reads it too, but the fast path is the default for generic TIFF
        assert s.backend == "tifffile"
        assert mm.io.open_slide(path, backend="openslide").backend == "openslide"
    t = mm.io.open_slide(path, backend="tifffile")
    for slide in (s, t):
        assert slide.dimensions == (420, 300) and slide.level_count == 1
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (420, 300)), arr)
        np.testing.assert_array_equal(slide.read_region((77, 45), 0, (90, 61)), arr[45:106, 77:167])


def test_subifd_pyramid_exposes_its_levels(tmp_path):
    arr = _image(400, 560)
    path = _subifd_pyramid(tmp_path / "pyr.tif", arr)
    assert mm.io.open_slide(path, backend="openslide").level_count == 1  # openslide's view
    s = mm.io.open_slide(path)
    assert s.backend == "tifffile" and s.vendor == "generic-tiff"
    assert s.level_dimensions == ((560, 400), (280, 200), (140, 100))
    assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    assert s.mpp == pytest.approx(0.5) and s.mpp_source == "metadata"
    assert s.level_mpp(2) == pytest.approx(2.0)
    assert s.properties["openslide.level-count"] == "3"
    for level, step in ((1, 2), (2, 4)):
        low = arr[::step, ::step]
        np.testing.assert_array_equal(s.read_region((0, 0), level, low.shape[1::-1]), low)
        np.testing.assert_array_equal(
            s.read_region((8 * step, 12 * step), level, (50, 30)), low[12:42, 8:58]
        )
    assert s.best_level_for_downsample(4.5) == 2
    thumb = s.get_thumbnail(140)
    np.testing.assert_array_equal(thumb, arr[::4, ::4])


@pytest.mark.parametrize(
    ("resolution", "unit", "tiled", "expected"),
    [
        ((1e4 / 0.25, 1e4 / 0.25), "CENTIMETER", True, 0.25),
        ((25400 / 0.5, 25400 / 0.5), "INCH", True, 0.5),
        ((72, 72), "INCH", False, None),  # a striped image's screen dpi is not a microscope
        (None, None, True, None),
    ],
)
def test_mpp_from_resolution_tags(tmp_path, resolution, unit, tiled, expected):
    arr = _image(96, 128)
    kw = {"resolution": resolution, "resolutionunit": unit} if resolution else {}
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, arr, photometric="rgb", tile=(32, 32) if tiled else None, **kw)
    s = mm.io.open_slide(path, backend="tifffile")
    assert s.mpp == (pytest.approx(expected) if expected else None)
    assert s.mpp_source == ("metadata" if expected else None)
    assert mm.io.open_slide(path, backend="tifffile", mpp=0.3).mpp_source == "override"


def test_out_of_bounds_like_the_other_backends(tmp_path):
    arr = _image(256, 256)
    path = tmp_path / "lossless.tif"
    tifffile.imwrite(path, arr, tile=(64, 64), photometric="rgb")
    slides = [
        mm.io.ArraySlide(arr),
        mm.io.open_slide(path, backend="openslide"),
        mm.io.open_slide(path, backend="tifffile"),
    ]
    assert [s.backend for s in slides] == ["array", "openslide", "tifffile"]
    edge = [s.read_region((250, 253), 0, (7, 4)) for s in slides]  # one pixel over: white
    for img in edge[1:]:
        np.testing.assert_array_equal(img, edge[0])
    assert (edge[0][:, 6] == 255).all() and (edge[0][3] == 255).all()
    for s in slides:
        with pytest.raises(SlideError, match="outside the slide"):
            s.read_region((250, 0), 0, (64, 64))
        with pytest.raises(SlideError, match="outside the slide"):
            s.read_region((-1, 0), 0, (8, 8))
        with pytest.raises(SlideError, match="level 3"):
            s.read_region((0, 0), 3, (8, 8))
        with pytest.raises(SlideError, match="size"):
            s.read_region((0, 0), 0, (0, 8))


def test_agrees_with_openslide_on_a_jpeg_pyramid(tmp_path):
    spec = default_spec(1024, 768, mpp=0.5, levels=(1, 4), seed=2)
    path = write_synthetic_slide(tmp_path / "pyr.tif", spec, tile_size=256)
    o = mm.io.open_slide(path, backend="openslide")
    t = mm.io.open_slide(path)
    assert t.backend == "tifffile"  # the fast path is the default for generic TIFF
    assert t.level_dimensions == o.level_dimensions
    assert t.level_downsamples == o.level_downsamples and t.mpp == o.mpp
    for level in (0, 1):
        ds = int(o.level_downsamples[level])
        lw, lh = o.level_dimensions[level]
        cases = [((0, 0), (64, 64)), ((9, 22), (150, 97)), ((lw - 5, lh - 3), (6, 4))]
        for (lx, ly), size in cases:
            loc = (lx * ds, ly * ds)
            np.testing.assert_array_equal(
                t.read_region(loc, level, size), o.read_region(loc, level, size)
            )


def test_tile_and_read_tiles_end_to_end(tmp_path):
    arr = _image(400, 560)
    path = _subifd_pyramid(tmp_path / "pyr.tif", arr)
    s = mm.io.open_slide(path)
    tiles = mm.pp.tile(s, 32, mpp=1.0, min_tissue=0.0)  # level 1, native
    rec = tiles.uns["mmpath"]["slides"]["pyr"]
    assert rec["backend"] == "tifffile" and rec["tiling"]["level"] == 1
    assert tiles.n_obs == (280 // 32) * (200 // 32)
    batch = mm.io.read_tiles(s, tiles)
    low = arr[::2, ::2]
    for i in (0, tiles.n_obs - 1):
        x, y = int(tiles.obs["x"].iloc[i]) // 2, int(tiles.obs["y"].iloc[i]) // 2
        np.testing.assert_array_equal(batch[i], low[y : y + 32, x : x + 32])
    # the table reopens the slide with the same backend, also after an h5ad round trip
    mm.io.write_h5ad(tiles, tmp_path / "t.h5ad")
    back = mm.io.read_h5ad(tmp_path / "t.h5ad")
    reopened = mm.io.open_slide_from(back)
    assert reopened.backend == "tifffile" and reopened.level_count == 3
    np.testing.assert_array_equal(mm.io.read_tiles(None, back), batch)


def test_reads_lazily_by_tile_and_pickles(tmp_path):
    arr = _image(512, 512)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, arr, tile=(64, 64), photometric="rgb", compression="zlib")
    s = mm.io.open_slide(path, backend="tifffile")
    s._cache.clear()
    np.testing.assert_array_equal(s.read_region((70, 70), 0, (40, 40)), arr[70:110, 70:110])
    assert len(s._cache) == 1  # one 64x64 tile decoded, not the level
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.read_region((0, 448), 0, (64, 64)), arr[448:, :64])
    # uncompressed strips are memory-mapped, not read whole
    tifffile.imwrite(tmp_path / "strip.tif", arr, photometric="rgb")
    st = mm.io.open_slide(tmp_path / "strip.tif")
    assert st.backend == "tifffile" and st._levels[0].memmap is not None
    np.testing.assert_array_equal(st.read_region((5, 400), 0, (100, 50)), arr[400:450, 5:105])


def test_16bit_greyscale_and_palette(tmp_path):
    arr = _image(128, 128)
    tifffile.imwrite(tmp_path / "rgb16.tif", arr.astype(np.uint16) * 257, tile=(32, 32))
    s = mm.io.open_slide(tmp_path / "rgb16.tif", backend="tifffile")
    np.testing.assert_array_equal(s.read_region((0, 0), 0, (128, 128)), arr)
    grey = arr[..., 0]
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=(32, 32), photometric="minisblack")
    g = mm.io.open_slide(tmp_path / "grey.tif", backend="tifffile")
    np.testing.assert_array_equal(
        g.read_region((3, 5), 0, (40, 30)), np.repeat(grey[5:35, 3:43, None], 3, axis=2)
    )
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0] = np.arange(256) * 257
    tifffile.imwrite(
        tmp_path / "pal.tif", grey, tile=(32, 32), photometric="palette", colormap=cmap
    )
    p = mm.io.open_slide(tmp_path / "pal.tif", backend="tifffile").read_region((0, 0), 0, (8, 8))
    np.testing.assert_array_equal(p[..., 0], grey[:8, :8])
    assert (p[..., 1:] == 0).all()


def test_damaged_tile_is_reported(tmp_path):
    arr = _image(256, 256)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, arr, tile=(64, 64), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[5]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 32)
    s = mm.io.open_slide(path, backend="tifffile")
    with pytest.raises(TileReadError, match="damaged"):
        s.read_region((70, 70), 0, (16, 16))
    np.testing.assert_array_equal(s.read_region((0, 0), 0, (64, 64)), arr[:64, :64])


def test_svs_opens_on_the_fast_path_with_openslide_metadata(sample_slide):
    s = mm.io.open_slide(sample_slide.path)
    assert s.backend == "tifffile" and s.vendor == "aperio"
    assert s.mpp == pytest.approx(0.499) and s.properties["aperio.AppMag"] == "20"
    assert set(s.associated_image_names()) >= {"label", "macro", "thumbnail"}
    assert s.associated_image("label").ndim == 3
    assert mm.io.open_slide(sample_slide.path, backend="openslide").backend == "openslide"
    with pytest.raises(SlideError, match="backend"):
        mm.io.open_slide(sample_slide.path, backend="pil")
