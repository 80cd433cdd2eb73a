"""The demo ViT's real-label probe (its model card, `tools/real_data_figures.py probe`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _figures():
    spec = importlib.util.spec_from_file_location(
        "real_data_figures", TOOLS / "real_data_figures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_colour_histogram_equals_numpy_histogram():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    crops[0, 0, 0] = (0, 255, 128)  # the edges of the value range
    got = _figures().colour_histogram(crops, bins=16)
    ref = [
        np.concatenate([np.histogram(c[..., ch], bins=16, range=(0, 256))[0] for ch in range(3)])
        for c in crops
    ]
    np.testing.assert_allclose(got, np.asarray(ref) / (9 * 7))
    assert np.allclose(got.reshape(5, 3, 16).sum(-1), 1.0)


@pytest.mark.slow
def test_probe_reproduces_the_card(testdata, monkeypatch, tmp_path):
    """The figures in mmpath-demo-vit's card, within solver noise."""
    import torch

    monkeypatch.setenv("MMPATH_TESTDATA", str(testdata))
    torch.set_num_threads(1)
    res = _figures().probe_figures(tmp_path)
    assert res["n"] == {"connective": 199, "inflammatory": 27, "neoplastic": 5}
    card = {"32px": (0.518, 0.655), "64px": (0.443, 0.611), "112px": (0.444, 0.706)}
    for crop, (vit, hist) in card.items():
        row = res["crops"][crop]
        assert abs(row["encoder"]["balanced_accuracy"] - vit) < 0.02, (crop, row)
        assert abs(row["colour_histogram"]["balanced_accuracy"] - hist) < 0.005, (crop, row)
