"""Our Deep Zoom geometry is openslide's: every tile read (level-0 location, slide level, read
size, output size) equals ``openslide.deepzoom.DeepZoomGenerator._get_tile_info``, and the
pixels match its ``get_tile`` on real (the bundled Aperio sample) and pyramidal slides."""

from __future__ import annotations

import io

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

import mmpath as mm
from mmpath.errors import SlideError
from mmpath.serve._deepzoom import DeepZoom


def _addresses(cols: int, rows: int):
    if cols * rows <= 64:
        return [(c, r) for c in range(cols) for r in range(rows)]
    pick = lambda n: sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n)))  # noqa: E731
    return [(c, r) for c in pick(cols) for r in pick(rows)]


@pytest.fixture(params=["sample", "pyramid"])
def slide_path(request, synthetic_slide_path):
    if request.param == "sample":
        return mm.datasets.sample_slide().path
    return synthetic_slide_path


def test_geometry_equals_openslide_deepzoom(slide_path):
    ref = DeepZoomGenerator(openslide.OpenSlide(str(slide_path)), 254, 1, limit_bounds=False)
    ours = DeepZoom(mm.io.open_slide(slide_path))
    assert ours.level_count == ref.level_count
    assert ours.level_dimensions == ref.level_dimensions
    assert ours.level_tiles == ref.level_tiles
    n = 0
    for z in range(ref.level_count):
        for addr in _addresses(*ref.level_tiles[z]):
            (loc, level, size), z_size = ref._get_tile_info(z, addr)
            got = ours.tile_read(z, *addr)
            assert (got.location, got.level, got.size, got.out_size) == (
                tuple(loc),
                level,
                tuple(size),
                tuple(z_size),
            ), (z, addr)
            n += 1
    assert n > 50


def test_pixels_match_openslide_deepzoom(slide_path):
    ref = DeepZoomGenerator(openslide.OpenSlide(str(slide_path)), 254, 1, limit_bounds=False)
    ours = DeepZoom(mm.io.open_slide(slide_path))
    top = ref.level_count - 1
    for z, addr in [
        (top, (1, 1)),
        (top, (0, 0)),
        (top - 2, (0, 0)),
        (top - 4, (0, 0)),
        (3, (0, 0)),
    ]:
        want = np.asarray(ref.get_tile(z, addr).convert("RGB"), float)
        got = np.asarray(ours.tile_image(z, *addr), float)
        assert got.shape == want.shape, (z, addr)
        assert np.abs(got - want).mean() < 0.5, (z, addr)  # the same pixels, resampled alike
    jpeg = Image.open(io.BytesIO(ours.tile_jpeg(top, 1, 1))).convert("RGB")
    want = np.asarray(ref.get_tile(top, (1, 1)).convert("RGB"), float)
    assert np.abs(np.asarray(jpeg, float) - want).mean() < 6.0  # what is served: JPEG q85


def test_bad_addresses_are_refused(sample_slide):
    dz = DeepZoom(sample_slide)
    top = dz.level_count - 1
    for z, c, r in [(-1, 0, 0), (top + 1, 0, 0), (top, -1, 0), (top, *dz.level_tiles[top])]:
        with pytest.raises(SlideError):
            dz.tile_read(z, c, r)
    assert 'TileSize="254"' in dz.dzi() and 'Width="2220"' in dz.dzi()
