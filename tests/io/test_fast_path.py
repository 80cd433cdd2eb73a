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


def _holed(path, arr, *, hole: int = 1):
    tifffile.imwrite(path, arr, tile=(128, 128), photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[hole] = 0
        tag.overwrite(counts)
    return path


def test_openslide_reader_missing_tile_white_opaque_tiles_exact(tmp_path):
    import openslide

    arr = _image(256, 256)
    path = _holed(tmp_path / "hole.tif", arr)
    s = mm.io.open_slide(path)
    assert s.backend == "openslide"
    osr = openslide.OpenSlide(str(path))

    def ref(loc, size):
        return np.asarray(osr.read_region(loc, 0, size).convert("RGB"))

    # Opaque tiles: exactly openslide's pixels, as a read-only view the batch copies once.
    np.testing.assert_array_equal(s._read_view((0, 0), 0, (128, 128)), ref((0, 0), (128, 128)))
    assert not s._read_view((0, 128), 0, (128, 128)).flags.writeable
    # The missing tile (top right) is transparent in openslide: white here, never black.
    assert (s.read_region((128, 0), 0, (128, 128)) == 255).all()
    assert (ref((128, 0), (128, 128)) == 0).all()  # what a bare convert("RGB") gives
    # A region across both: the opaque part is openslide's, the hole white.
    both = s.read_region((64, 64), 0, (128, 128))
    np.testing.assert_array_equal(both[:, :64], ref((64, 64), (64, 128)))
    assert (both[:64, 64:] == 255).all()
    tiles = mm.pp.tile(s, size=128, level=0, min_tissue=0.0)
    batch = mm.io.read_tiles(s, tiles)
    assert batch.shape == (4, 128, 128, 3) and (batch[1] == 255).all()
    np.testing.assert_array_equal(batch[2], ref((0, 128), (128, 128)))


def test_pil_rgba_to_rgb_composites_partial_alpha_onto_white():
    from PIL import Image

    from mmpath.io.slide import rgba_to_rgb as _rgba_to_rgb
    from mmpath.io.slide.openslide_slide import _pil_rgba_to_rgb

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (9, 13, 4), np.uint8)
    opaque = rgba.copy()
    opaque[..., 3] = 255
    out = _pil_rgba_to_rgb(Image.fromarray(opaque, "RGBA"))
    np.testing.assert_array_equal(out, opaque[..., :3])
    assert out.shape == (9, 13, 3) and out.dtype == np.uint8
    got = _pil_rgba_to_rgb(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(got, _rgba_to_rgb(rgba))
    a = rgba[..., 3:].astype(float) / 255  # straight alpha over white, rounded
    want = np.floor(rgba[..., :3] * a + 255 * (1 - a) + 0.5)
    assert np.abs(got - want).max() <= 1
    clear = rgba.copy()
    clear[..., 3] = 0
    assert (_pil_rgba_to_rgb(Image.fromarray(clear, "RGBA")) == 255).all()


def test_reader_decision_is_reused_until_the_file_changes(tmp_path, monkeypatch):
    import openslide

    from mmpath.io.slide import policy as slide_mod

    arr = _image(256, 256)
    path = _holed(tmp_path / "hole.tif", arr)
    assert mm.io.open_slide(path).backend == "openslide"
    calls = []
    real = openslide.OpenSlide.detect_format
    monkeypatch.setattr(openslide.OpenSlide, "detect_format", lambda p: calls.append(p) or real(p))
    again = mm.io.open_slide(path, mpp=0.25, slide_id="x")
    assert again.backend == "openslide" and not calls  # decided at the first open
    assert again.mpp == 0.25 and again.slide_id == "x"
    # The same path rewritten without the hole: checked again, now the fast path.
    tifffile.imwrite(path, arr, tile=(128, 128), photometric="rgb", compression="jpeg")
    assert mm.io.open_slide(path).backend == "tifffile" and calls
    assert len(slide_mod._READERS) <= 4096
