"""The fast read paths keep behaviour: PIL RGBA->RGB, read-only views, shared-memory workers."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image

import mmpath as mm
from mmpath.datasets import default_spec, write_synthetic_slide
from mmpath.io.slide import _pil_rgba_to_rgb, _rgba_to_rgb


@pytest.fixture(scope="module")
def damaged_slide(tmp_path_factory):
    """A 1024x768 pyramid whose level-0 TIFF tile (row 1, col 1) is destroyed."""
    import tifffile

    path = tmp_path_factory.mktemp("fast") / "damaged.tif"
    write_synthetic_slide(path, default_spec(1024, 768, levels=(1, 4)), tile_size=256)
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[1 * 4 + 1]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 64)
    return path


def test_read_region_matches_openslide_and_is_writeable(synthetic_slide_path):
    osr = openslide.OpenSlide(str(synthetic_slide_path))
    with mm.io.open_slide(synthetic_slide_path) as s:
        W, H = s.dimensions
        for (x, y), level in (((300, 200), 0), ((W - 48, H - 48), 0), ((0, 0), 1)):
            got = s.read_region((x, y), level, (48, 48))
            ref = _rgba_to_rgb(np.asarray(osr.read_region((x, y), level, (48, 48))))
            np.testing.assert_array_equal(got, ref)
            assert got.flags.writeable and got.dtype == np.uint8 and got.shape == (48, 48, 3)
    osr.close()


def test_transparent_pixels_are_composited_on_white():
    rgba = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 255
    rgba[20:, :, 3] = 0
    got = _pil_rgba_to_rgb(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(got, _rgba_to_rgb(rgba))
    assert (got[20:] == 255).all() and (got[:20] == rgba[:20, :, :3]).all()
    rgba[..., 3] = 255
    np.testing.assert_array_equal(_pil_rgba_to_rgb(Image.fromarray(rgba, "RGBA")), rgba[..., :3])


def test_dataset_items_are_writeable(synthetic_slide_path):
    with mm.io.open_slide(synthetic_slide_path) as s:
        tiles = mm.pp.tile(s, 64, mpp=1.0)  # read 128 px and resized
    img, _ = mm.io.TileDataset(tiles)[0]
    assert img.flags.writeable and img.shape == (64, 64, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_tiles_reported_through_workers(damaged_slide, workers):
    with mm.io.open_slide(damaged_slide) as s:
        tiles = mm.pp.tile(s, 128, min_tissue=0.0)
        ref = mm.io.read_tiles(s, tiles[:2])
    with pytest.warns(UserWarning, match="4 tile"):
        out = list(mm.io.iter_tiles(tiles, batch_size=5, num_workers=workers))
    idx = np.concatenate([i for i, _ in out])
    batch = np.concatenate([b for _, b in out])
    np.testing.assert_array_equal(idx, np.arange(tiles.n_obs))
    xs, ys = tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()
    bad = (xs >= 256) & (xs < 512) & (ys >= 256) & (ys < 512)
    assert (batch[bad] == 255).all()
    np.testing.assert_array_equal(batch[:2], ref)
    # batches are independent copies, not views of a reused shared buffer
    assert all(b.flags.owndata or b.base is None or b.base.flags.owndata for _, b in out)
    assert not np.shares_memory(out[0][1], out[-1][1])


def test_stopping_early_releases_workers(synthetic_slide_path):
    with mm.io.open_slide(synthetic_slide_path) as s:
        tiles = mm.pp.tile(s, 64, min_tissue=0.0)
    it = mm.io.iter_tiles(tiles, batch_size=4, num_workers=2)
    idx, first = next(it)
    it.close()  # terminates the pool and frees the shared slots
    np.testing.assert_array_equal(idx, np.arange(4))
    np.testing.assert_array_equal(first, mm.io.read_tiles(None, tiles[:4]))
