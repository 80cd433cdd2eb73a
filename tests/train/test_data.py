"""Training data: table kinds (image files, slide coordinates, tile tables) and augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmpath.errors import DataError
from mmpath.train.augment import Augment, AugmentConfig, hed_jitter, sample_rng
from mmpath.train.data import ImageDataset, TableConfig, load_table


def test_augmentation_is_seeded_per_sample_and_keeps_stain_structure():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    aug = Augment(AugmentConfig.ssl(), 32)
    a = aug(img, sample_rng(0, 3, 7))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, aug(img, sample_rng(0, 3, 7)))  # same key, same pixels
    assert not np.array_equal(a, aug(img, sample_rng(0, 4, 7)))  # next epoch differs
    plain = Augment(AugmentConfig.none(), 40)(img, sample_rng(0, 0, 0))
    assert np.array_equal(plain, img)
    # dihedral only: the pixel multiset is unchanged
    dihedral = Augment(
        AugmentConfig(brightness=0, contrast=0, saturation=0, hed_scale=0, hed_shift=0), 40
    )
    out = dihedral(img, sample_rng(1, 0, 0))
    assert np.array_equal(np.sort(out.ravel()), np.sort(img.ravel()))
    # HED jitter with no jitter is the identity (deconvolution round-trips)
    x = np.clip(img.astype(np.float32) / 255, 0.05, 1)
    np.testing.assert_allclose(hed_jitter(x, np.random.default_rng(0), 0.0, 0.0), x, atol=1e-5)
    # in stain space (optical density x hed_from_rgb) a shift-only jitter adds one constant
    # vector per image, bounded by hed_shift
    from skimage.color import hed_from_rgb

    def stains(a):
        return -np.log(a) @ hed_from_rgb

    shifted = hed_jitter(x, np.random.default_rng(0), 0.0, 0.05)
    delta = (stains(shifted) - stains(x)).reshape(-1, 3)
    inside = (shifted > 1e-3).all(-1).ravel() & (shifted < 0.999).all(-1).ravel()  # unclipped
    np.testing.assert_allclose(
        delta[inside], np.broadcast_to(delta[inside][0], delta[inside].shape), atol=1e-4
    )
    assert np.all(np.abs(delta[inside][0]) <= 0.05) and np.abs(delta[inside][0]).min() > 0


def test_slide_coordinate_table(synthetic_slide_path, tmp_path):
    from mmpath.io import open_slide

    frame = pd.DataFrame(
        {
            "slide": [str(synthetic_slide_path)] * 2,
            "x": [400, 1300],
            "y": [500, 400],
            "caption": ["dense nuclei", "sparse nuclei"],
        }
    )
    frame.to_parquet(tmp_path / "pairs.parquet")
    table = load_table([str(tmp_path / "pairs.parquet")], TableConfig(tile_size=64), captions=True)
    with open_slide(synthetic_slide_path) as slide:
        expected = slide.read_region((1300, 400), 0, (64, 64))[..., :3]
    assert np.array_equal(table.read(1), expected)
    assert table.captions == ["dense nuclei", "sparse nuclei"]
    frame.assign(slide="missing.svs").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="slide files .* do not exist"):
        load_table([str(tmp_path / "bad.csv")], TableConfig(), captions=True)


def test_tile_table_with_caption_column(synthetic_slide, tmp_path):
    from mmpath import io, pp

    tiles = pp.tile(synthetic_slide, 64, level=1, min_tissue=0.5)
    assert tiles.n_obs > 8
    tiles.obs["caption"] = np.where(tiles.obs["x"] < 1000, "left tissue", "right tissue")
    io.write_h5ad(tiles, tmp_path / "tiles.h5ad")
    table = load_table([str(tmp_path / "tiles.h5ad")], TableConfig(), captions=True)
    assert len(table) == tiles.n_obs
    assert np.array_equal(table.read(3), io.read_tiles(synthetic_slide, tiles[3:4])[0])
    ds = ImageDataset(
        table,
        np.arange(len(table)),
        size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        augment=AugmentConfig(),
    )
    image, caption = ds[(2, 0)]
    assert tuple(image.shape) == (3, 32, 32) and caption == table.captions[2]
    with pytest.raises(DataError, match="no obs column 'label'"):
        load_table([str(tmp_path / "tiles.h5ad")], TableConfig(caption_col="label"), captions=True)


def test_missing_table_and_columns(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_table([str(tmp_path / "nope.csv")], TableConfig(), captions=True)
    pd.DataFrame({"path": ["a.png"], "text": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="no 'caption' column"):
        load_table([str(tmp_path / "t.csv")], TableConfig(), captions=True)
    with pytest.raises(DataError, match="needs an image column"):
        load_table([str(tmp_path / "t.csv")], TableConfig(caption_col="text"), captions=True)
    with pytest.raises(DataError, match="no training data"):
        load_table([], TableConfig(), captions=False)
