"""Tissue detection and tiling against synthetic geometry, level choice, tables."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError, SlideError


def _true_fraction(spec, x, y, size0, n=24):
    g = (np.arange(n) + 0.5) / n * size0
    gx, gy = np.meshgrid(g, g)
    return np.array([spec.tissue_mask(xi + gx, yi + gy).mean() for xi, yi in zip(x, y)])


def test_detect_tissue_matches_geometry(synthetic_slide, synthetic_spec):
    mask = mm.pp.detect_tissue(synthetic_slide)
    h, w = mask.mask.shape
    dx, dy = mask.downsample
    yy, xx = np.mgrid[0:h, 0:w]
    truth = synthetic_spec.tissue_mask((xx + 0.5) * dx, (yy + 0.5) * dy)
    agreement = (truth == mask.mask).mean()
    assert agreement > 0.98, agreement
    # pen stroke and dark artefact are excluded
    assert len(mask.contours) == 2
    for c in mask.contours:
        assert c.shape[1] == 2 and c.min() >= 0


def test_tissue_fractions_and_counts_match_geometry(synthetic_slide, synthetic_spec):
    tiles = mm.pp.tile(synthetic_slide, 128, mpp=0.5, min_tissue=0.0)
    size0 = 128
    obs = tiles.obs
    nx, ny = synthetic_spec.width // size0, synthetic_spec.height // size0
    assert tiles.n_obs == nx * ny
    truth = _true_fraction(synthetic_spec, obs[K.X].to_numpy(), obs[K.Y].to_numpy(), size0)
    err = np.abs(truth - obs[K.TISSUE_FRAC].to_numpy())
    assert err.mean() < 0.02 and err.max() < 0.2
    kept = mm.pp.tile(synthetic_slide, 128, mpp=0.5, min_tissue=0.5)
    clear = np.abs(truth - 0.5) > 0.15  # tiles far from the threshold must be classified right
    expect = set(np.asarray(tiles.obs_names)[clear & (truth >= 0.5)])
    got = set(kept.obs["x"].astype(str) + "," + kept.obs["y"].astype(str))
    names = [f"{x},{y}" for x, y in zip(obs[K.X], obs[K.Y])]
    lookup = dict(zip(np.asarray(tiles.obs_names), names))
    assert {lookup[n] for n in expect} <= got
    dropped = set(np.asarray(tiles.obs_names)[clear & (truth < 0.5)])
    assert not ({lookup[n] for n in dropped} & got)


def test_table_slots(synthetic_slide):
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=2.0)
    assert list(tiles.obs.columns[:4]) == [K.SLIDE_ID, K.X, K.Y, K.TISSUE_FRAC]
    assert tiles.obs[K.SLIDE_ID].dtype == "category"
    assert tiles.obs_names[0] == f"{synthetic_slide.slide_id}:0"
    spec = tiles.uns[K.UNS][K.UNS_SLIDES][synthetic_slide.slide_id][K.UNS_TILING]
    centre = tiles.obsm[K.SPATIAL][0]
    assert centre == pytest.approx(
        [tiles.obs[K.X].iloc[0] + spec["size0"] / 2, tiles.obs[K.Y].iloc[0] + spec["size0"] / 2]
    )


@pytest.mark.parametrize(
    ("mpp", "level", "read_size", "eff"),
    [
        (0.5, 0, 64, 0.5),
        (0.499, 0, 64, 0.5),  # within tolerance: native read, true mpp recorded
        (1.0, 0, 128, 1.0),  # no level at ds 2: read 2x at level 0 and resize
        (2.0, 1, 64, 2.0),
        (2.5, 1, 80, 2.5),
        (8.0, 2, 64, 8.0),
    ],
)
def test_level_choice(synthetic_slide, mpp, level, read_size, eff):
    plan = mm.pp.plan_read(synthetic_slide, 64, mpp=mpp)
    assert plan["level"] == level
    assert plan["read_size"] == read_size
    assert plan["mpp_effective"] == pytest.approx(eff)


def test_resampled_tiles_match_native_level(synthetic_slide):
    # 2.0 µm/px exists as level 1; reading it via level 0 + resize must look the same
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=2.0, min_tissue=0.9)
    native = mm.io.read_tiles(synthetic_slide, tiles[:5]).astype(float)
    spec = tiles.uns[K.UNS][K.UNS_SLIDES][synthetic_slide.slide_id][K.UNS_TILING]
    spec.update(level=0, read_size=256)
    resized = mm.io.read_tiles(synthetic_slide, tiles[:5]).astype(float)
    assert np.abs(native.mean(axis=(1, 2)) - resized.mean(axis=(1, 2))).max() < 6


def test_tile_by_level_and_stride(synthetic_slide):
    a = mm.pp.tile(synthetic_slide, 64, level=1, min_tissue=0.0)
    assert a.n_obs == (512 // 64) * (384 // 64)
    b = mm.pp.tile(synthetic_slide, 64, level=1, overlap=32, min_tissue=0.0)
    assert b.n_obs == ((512 - 64) // 32 + 1) * ((384 - 64) // 32 + 1)
    assert np.diff(np.unique(b.obs[K.X])).min() == 128  # 32 px at ds 4


def test_no_mpp_errors_only_when_needed():
    img = np.full((300, 400, 3), 240, np.uint8)
    img[50:250, 50:350] = (200, 100, 160)
    s = mm.io.ArraySlide(img, slide_id="nompp")
    with pytest.raises(SlideError, match="no mpp metadata .*mpp="):
        mm.pp.tile(s, 64, mpp=0.5)
    tiles = mm.pp.tile(s, 64, min_tissue=0.5)  # native level works without mpp
    assert tiles.n_obs > 0
    assert tiles.uns[K.UNS][K.UNS_SLIDES]["nompp"][K.UNS_TILING]["mpp_effective"] is None


def test_implausible_mpp_request():
    with pytest.raises(SlideError, match="mpp 900 µm/px is not a plausible slide resolution"):
        mm.io.ArraySlide(np.full((256, 256, 3), 200, np.uint8), mpp=900.0)
    s = mm.io.ArraySlide(np.full((256, 256, 3), 200, np.uint8), mpp=10.0)
    with pytest.raises(SlideError, match="upsampling"):
        mm.pp.tile(s, 64, mpp=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "positive"),
        ({"size": -3}, "positive"),
        ({"size": 64, "mpp": -1.0}, "> 0"),
        ({"size": 5000}, "larger than"),
        ({"size": 64, "overlap": 64}, "overlap"),
        ({"size": 64, "min_tissue": 2.0}, "min_tissue"),
    ],
)
def test_bad_tiling_requests(synthetic_slide, kwargs, match):
    size = kwargs.pop("size")
    with pytest.raises(SlideError, match=match):
        mm.pp.tile(synthetic_slide, size, **kwargs)


def test_empty_slide_gives_empty_table_and_warning():
    glass = np.random.default_rng(0).integers(235, 250, (512, 512, 3)).astype(np.uint8)
    s = mm.io.ArraySlide(glass, mpp=0.5, slide_id="glass")
    with pytest.warns(UserWarning, match="empty"):
        tiles = mm.pp.tile(s, 64, mpp=0.5)
    assert tiles.n_obs == 0
    assert mm.io.read_tiles(s, tiles).shape == (0, 0, 0, 3)


def test_greyscale_slide_says_why_no_tissue_is_found(caplog):
    grey = np.full((512, 512), 235, np.uint8)
    grey[100:400, 100:400] = 90  # dark "tissue" without colour
    slide = mm.io.ArraySlide(grey, mpp=1.0, slide_id="grey")
    with caplog.at_level("WARNING", logger="mmpath.pp.tissue"):
        assert not mm.pp.detect_tissue(slide).mask.any()
    assert "greyscale" in caplog.text and "min_tissue=0" in caplog.text
    assert mm.pp.tile(slide, 64, min_tissue=0.0).n_obs == 64  # the advice works


def test_h5ad_round_trip_and_reopen(tmp_path, synthetic_slide):
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=2.0)
    path = mm.io.write_h5ad(tiles, tmp_path / "t.h5ad")
    back = mm.io.read_h5ad(path)
    assert back.obs.equals(tiles.obs) or (back.obs.values == tiles.obs.values).all()
    np.testing.assert_array_equal(back.obsm[K.SPATIAL], tiles.obsm[K.SPATIAL])
    a = mm.io.read_tiles(synthetic_slide, tiles[:10])
    b = mm.io.read_tiles(None, back[:10])  # reopened from provenance
    np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_atomic_write_keeps_previous_on_failure(tmp_path, synthetic_slide, monkeypatch):
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=2.0)
    path = mm.io.write_h5ad(tiles, tmp_path / "t.h5ad")
    before = path.read_bytes()

    def boom(self, *a, **k):
        open(a[0], "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tiles), "write_h5ad", boom)
    with pytest.raises(RuntimeError):
        mm.io.write_h5ad(tiles, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_read_h5ad_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        mm.io.read_h5ad(tmp_path / "nope.h5ad")
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    with pytest.raises(DataError, match="cannot read"):
        mm.io.read_h5ad(bad)


def test_concat_keeps_provenance_and_reads_cohort(synthetic_slide, sample_slide):
    a = mm.pp.tile(synthetic_slide, 64, mpp=2.0)
    b = mm.pp.tile(sample_slide, 64, mpp=2.0)
    cohort = mm.io.concat([a, b])
    assert cohort.n_obs == a.n_obs + b.n_obs
    slides = cohort.uns[K.UNS][K.UNS_SLIDES]
    assert set(slides) == {synthetic_slide.slide_id, sample_slide.slide_id}
    idx = [0, a.n_obs]  # first tile of each slide
    batch = mm.io.read_tiles(None, cohort[idx])
    np.testing.assert_array_equal(batch[0], mm.io.read_tiles(synthetic_slide, a[:1])[0])
    np.testing.assert_array_equal(batch[1], mm.io.read_tiles(sample_slide, b[:1])[0])
    with pytest.raises(DataError, match="share row names"):
        mm.io.concat([a, a])


def test_iter_tiles_and_dataset_agree(synthetic_slide_path):
    with mm.io.open_slide(synthetic_slide_path) as s:
        tiles = mm.pp.tile(s, 64, mpp=1.0)
        ref = mm.io.read_tiles(s, tiles)
    for workers in (0, 2):
        got = np.concatenate(
            [b for _, b in mm.io.iter_tiles(tiles, batch_size=7, num_workers=workers)]
        )
        np.testing.assert_array_equal(got, ref)
    ds = mm.io.TileDataset(tiles)
    img, i = ds[3]
    assert i == 3
    np.testing.assert_array_equal(img, ref[3])


def test_torch_dataloader_with_workers(synthetic_slide_path):
    torch = pytest.importorskip("torch")
    with mm.io.open_slide(synthetic_slide_path) as s:
        tiles = mm.pp.tile(s, 64, mpp=1.0)
        ref = mm.io.read_tiles(s, tiles)
    loader = torch.utils.data.DataLoader(mm.io.TileDataset(tiles), batch_size=8, num_workers=2)
    out = torch.cat([x for x, _ in loader]).numpy()
    np.testing.assert_array_equal(out, ref)


def test_sample_slide_end_to_end(sample_slide, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real sample must tile without warnings
        tiles = mm.pp.tile(sample_slide, 224, mpp=0.5, min_tissue=0.5)
    spec = tiles.uns[K.UNS][K.UNS_SLIDES][sample_slide.slide_id][K.UNS_TILING]
    assert spec["read_size"] == 224 and spec["mpp_effective"] == pytest.approx(0.499)
    assert 30 <= tiles.n_obs <= 70
    assert tiles.obs[K.TISSUE_FRAC].min() >= 0.5
    batch = mm.io.read_tiles(sample_slide, tiles)
    # tissue tiles are stained: clearly darker and more saturated than glass
    assert batch.mean() < 200
    fig = mm.pl.tiles(tiles, sample_slide, color=K.TISSUE_FRAC, save=tmp_path / "grid.png")
    assert fig is not None and (tmp_path / "grid.png").stat().st_size > 10_000


def test_hsv_conversion_matches_skimage():
    from skimage.color import rgb2hsv

    from mmpath.pp.tissue import _rgb_to_hsv

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    ref = rgb2hsv(rgb)
    got = np.stack(_rgb_to_hsv(rgb), axis=-1) / 255.0
    hue_err = np.abs(got[..., 0] - ref[..., 0])
    hue_err = np.minimum(hue_err, 1 - hue_err)  # hue is circular
    assert hue_err.max() < 3 / 255
    assert np.abs(got[..., 1:] - ref[..., 1:]).max() < 2 / 255
