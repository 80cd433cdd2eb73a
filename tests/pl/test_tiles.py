"""pl.tiles: tiles painted at thumbnail resolution (issue 10 item 8): right pixels, and time
and memory bounded by the thumbnail, not by the number of tiles."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.pl.tiles import _cover, _outline_counts, _pixel_boxes


class _HugeSlide:
    """A slide too large to hold (150,000 px square): only its thumbnail is materialised."""

    slide_id = "huge"

    def __init__(self, side: int = 150_000) -> None:
        self.dimensions = (side, side)

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        return np.full((max_size, max_size, 3), 230, np.uint8)

    def close(self) -> None:
        pass


def _grid_table(n_side: int, size0: float, side: int) -> ad.AnnData:
    step = side // n_side
    g = np.arange(n_side) * step
    xs, ys = (a.ravel() for a in np.meshgrid(g, g))
    n = xs.size
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(["huge"] * n),
            K.X: xs,
            K.Y: ys,
            K.TISSUE_FRAC: np.linspace(0, 1, n, dtype=np.float32),
            "label": pd.Categorical(np.where(xs < side / 2, "left", "right")),
        },
        index=[f"huge:{i}" for i in range(n)],
    )
    t = ad.AnnData(obs=obs)
    t.uns[K.UNS] = {K.UNS_SLIDES: {"huge": {K.UNS_TILING: {"size": 224, "size0": size0}}}}
    return t


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_cover_counts_and_sums_exactly():
    rng = np.random.default_rng(0)
    h, w = 37, 53
    x0, y0 = rng.integers(0, w - 1, 200), rng.integers(0, h - 1, 200)
    boxes = np.stack([x0, y0, x0 + rng.integers(1, 9, 200), y0 + rng.integers(1, 9, 200)], 1)
    boxes[:, 2] = np.minimum(boxes[:, 2], w)
    boxes[:, 3] = np.minimum(boxes[:, 3], h)
    v = rng.standard_normal(200)
    count, total = np.zeros((h, w)), np.zeros((h, w))
    for (a, b, c, d), val in zip(boxes, v, strict=True):  # the plain loop it replaces
        count[b:d, a:c] += 1
        total[b:d, a:c] += val
    np.testing.assert_allclose(_cover(boxes, h, w), count, atol=1e-9)
    np.testing.assert_allclose(_cover(boxes, h, w, v), total, atol=1e-9)
    edge = np.zeros((h, w))
    for a, b, c, d in boxes:
        m = np.zeros((h, w), bool)
        m[b:d, a:c] = True
        m[b + 1 : d - 1, a + 1 : c - 1] = False
        edge += m
    assert ((_outline_counts(boxes, h, w) > 0) == (edge > 0)).all()


def test_pixel_boxes_tile_the_thumbnail_without_gaps_or_overlap():
    xy = np.stack(np.meshgrid(np.arange(10) * 1000.0, np.arange(10) * 1000.0), -1).reshape(-1, 2)
    boxes = _pixel_boxes(xy, 1000.0, 100 / 10_000, 100, 100)
    assert (_cover(boxes, 100, 100) == 1).all()  # each pixel exactly once


@pytest.mark.parametrize(
    "n_side", [200, pytest.param(500, marks=pytest.mark.slow)], ids=["40k", "250k"]
)
def test_thumbnail_is_bounded_for_a_huge_tile_count(tmp_path, n_side):
    """40,000 / 250,000 tiles (the issue saw 2.3 GB at 552k): the figure keeps its size and
    the drawing allocates about as much as for 2,500 tiles plus a few bytes per tile of index
    arrays (a patch per tile cost ~4 kB each)."""
    slide = _HugeSlide()
    small = _grid_table(50, 3000.0, 150_000)
    huge = _grid_table(n_side, 150_000 / n_side, 150_000)
    assert huge.n_obs == n_side**2
    for color in (K.TISSUE_FRAC,):  # the label path shares the painting (tested below)
        sizes = {}
        peaks = {}
        for name, t in (("small", small), ("huge", huge)):
            png = tmp_path / f"{name}-{color}.png"
            peaks[name] = _peak(
                lambda t=t, png=png, c=color: mm.pl.tiles(t, slide, color=c, save=png)
            )
            from PIL import Image

            with Image.open(png) as im:
                sizes[name] = im.size
        assert sizes["small"] == sizes["huge"]
        per_tile = (peaks["huge"] - peaks["small"]) / (huge.n_obs - small.n_obs)
        assert per_tile < 400, (color, peaks)


@pytest.mark.parametrize("color", [K.TISSUE_FRAC, "label", None])
def test_painted_pixels_follow_the_tiles(color):
    """Left half labelled/valued differently from the right half: the painted overlay shows
    it (checked on the figure's own overlay image)."""
    slide = _HugeSlide(10_000)
    t = _grid_table(10, 1000.0, 10_000)
    fig = mm.pl.tiles(t, slide, color=color, max_size=100, alpha=1.0)
    overlay = fig.axes[0].images[-1].get_array()
    assert overlay.shape == (100, 100, 4)
    if color is None:  # outlines only: borders painted, tile interiors clear
        assert overlay[0, :, 3].all() and not overlay[5, 5, 3]
        return
    assert (overlay[..., 3] == 1).all()  # every pixel is under a tile
    left, right = overlay[50, 10, :3], overlay[50, 90, :3]
    assert not np.allclose(left, right)
    if color == "label":  # one colour per label
        assert np.allclose(overlay[:, :50, :3], left) and np.allclose(overlay[:, 50:, :3], right)
