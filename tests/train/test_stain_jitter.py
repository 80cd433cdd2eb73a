"""Macenko stain jitter (augment.stain_jitter) beside the HED jitter: equal to torchstain's
augmentor given the same draws, seeded, identity at zero strength, glass kept."""

from __future__ import annotations

import numpy as np
import pytest
from torchstain.numpy.augmentors import NumpyMacenkoAugmentor

import mmpath as mm
from mmpath.train.augment import Augment, AugmentConfig, sample_rng, stain_jitter


@pytest.fixture(scope="module")
def tile():
    with mm.datasets.sample_slide() as s:
        return s.read_region((700, 700), 0, (224, 224))


class _Draws:
    """Stands in for both numpy.random (torchstain) and a Generator (ours)."""

    def __init__(self, values):
        self.values = list(values)

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.values.pop(0)


def test_equals_torchstain_augmentor(tile, monkeypatch):
    u = [0.9, 0.2, 0.4, 0.7]
    ref = NumpyMacenkoAugmentor(sigma1=0.2, sigma2=0.2)
    ref.fit(tile)
    monkeypatch.setattr(np.random, "uniform", _Draws(u).uniform)
    theirs = ref.augment()
    monkeypatch.undo()
    ours = stain_jitter(tile, _Draws(u), 0.2, 0.2)
    tissue = tile.min(-1) < 215  # ours keeps glass as it is; torchstain re-mixes it too
    diff = np.abs(ours.astype(int) - theirs)[tissue]
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert np.abs(ours.astype(int) - tile)[tissue].mean() > 3  # it did jitter


def test_seeded_identity_glass_and_in_augment(tile):
    a = stain_jitter(tile, sample_rng(0, 1, 2), 0.3, 0.1)
    b = stain_jitter(tile, sample_rng(0, 1, 2), 0.3, 0.1)
    np.testing.assert_array_equal(a, b)
    still = stain_jitter(tile, sample_rng(0, 1, 2), 0.0, 0.0)
    # zero strength: Macenko's projection onto the stain plane only (as self-normalisation)
    assert np.abs(still.astype(int) - tile).mean() < 4
    glass = np.full((64, 64, 3), 245, np.uint8)
    np.testing.assert_array_equal(stain_jitter(glass, sample_rng(0, 0, 0), 0.3, 0.3), glass)
    cfg = AugmentConfig(
        flips=False,
        rot90=False,
        brightness=0,
        contrast=0,
        saturation=0,
        hed_scale=0,
        hed_shift=0,
        stain_sigma1=0.3,
        stain_sigma2=0.1,
    )
    out = Augment(cfg, 224)(tile, sample_rng(0, 1, 2))
    np.testing.assert_array_equal(out, a)
    with pytest.raises(ValueError, match="stain_sigma1"):
        AugmentConfig(stain_sigma1=1.5)
