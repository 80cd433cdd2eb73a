"""Stain-aware classical baselines on real H&E (histolytics stroma, spatially held-out half)."""

from __future__ import annotations

import numpy as np
import pytest

from mmpath.datasets.stromal import stromal_nuclei
from mmpath.errors import DataError
from mmpath.tl.seg_baselines import baseline_segment


def _dice(p, g):
    p, g = p.astype(bool), g.astype(bool)
    return 2 * (p & g).sum() / (p.sum() + g.sum())


@pytest.fixture(scope="module")
def stroma(testdata):
    return stromal_nuclei(testdata / "histolytics")


def test_loader_counts_and_spatial_split(stroma):
    names, counts = np.unique(stroma.classes, return_counts=True)
    assert dict(zip(names, counts)) == {"connective": 387, "inflammatory": 31, "neoplastic": 5}
    assert stroma.image.shape == (1500, 1500, 3) and stroma.mask.shape == (1500, 1500)
    assert 0.02 < stroma.mask.mean() < 0.15
    assert len(np.unique(stroma.instances)) - 1 > 400  # nearly every polygon drawn
    train, test = stroma.split_crops(size=128)
    assert train.images.shape[1:] == (128, 128, 3) and len(train.images) == len(test.images)
    crops, cls = stroma.nucleus_crops(size=32)
    assert crops.shape == (423, 32, 32, 3) and len(cls) == 423


def test_hematoxylin_otsu_beats_grey_otsu_on_real_nuclei(stroma):
    _, test = stroma.split_crops(size=128)
    grey = _dice(baseline_segment(test.images, "otsu"), test.masks)
    stain = _dice(baseline_segment(test.images, "hematoxylin_otsu"), test.masks)
    assert stain > grey + 0.25, (grey, stain)  # measured 0.19 vs 0.54
    assert stain > 0.45


def test_watershed_instances_match_nucleus_count(stroma):
    h, w = stroma.mask.shape
    right = stroma.image[:, w // 2 :]
    labels = baseline_segment(right, "hematoxylin_watershed")
    assert labels.dtype == np.int32
    n_true = len(np.unique(stroma.instances[:, w // 2 :])) - 1
    n_pred = int(labels.max())
    # measured 694 instances for 232 polygons: the classical baseline over-splits and keeps
    # stained debris; this bounds it, it does not praise it
    assert 0.5 * n_true < n_pred < 4 * n_true, (n_true, n_pred)
    # instances cover exactly the stain-aware mask
    mask = baseline_segment(right, "hematoxylin_otsu")
    assert np.array_equal(labels > 0, mask.astype(bool))


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="fetch_test_data histolytics"):
        stromal_nuclei(tmp_path)
