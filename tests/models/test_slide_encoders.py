"""Slide encoders: what each needs is checked before loading; remote code is opt-in."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from mmpath import _keys as K  # noqa: E402
from mmpath.errors import DataError, ModelError, WeightsError  # noqa: E402


def _table(width=768, encoder="conch_v15", size=512, mpp=0.5, n=6):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(
        {K.SLIDE_ID: ["s1"] * n, K.X: np.arange(n) * 1024, K.Y: np.zeros(n, int)},
        index=[f"s1:{i}" for i in range(n)],
    )
    a = ad.AnnData(obs=obs)
    a.obsm["X_f"] = np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)
    a.uns[K.UNS] = {
        K.UNS_SLIDES: {"s1": {"path": "", K.UNS_TILING: {"size": size, "mpp": mpp, "size0": 1024}}},
        K.UNS_EMBEDDINGS: {"X_f": {"encoder": encoder}},
    }
    return a


def test_registered_with_requirements():
    from mmpath.models.slide_encoders import slide_encoders

    assert set(slide_encoders.list()) == {"titan", "prism", "gigapath-slide", "feather"}
    titan = slide_encoders.get("titan").meta
    assert (titan.feature_dim, titan.tile_px, titan.mpp, titan.out_dim) == (768, 512, 0.5, 768)
    prism = slide_encoders.get("prism").meta
    assert (prism.patch_encoders[0], prism.feature_dim, prism.out_dim) == ("virchow", 2560, 1280)
    giga = slide_encoders.get("gigapath-slide").meta
    assert (giga.feature_dim, giga.tile_px, giga.remote_code) == (1536, 256, False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 1024, "encoder": "uni"}, r"uni features \(1024-d\) but titan needs conch_v15"),
        ({"encoder": "uni"}, "uni features"),
        ({"size": 224}, "tiled at 224 px"),
        ({"mpp": 0.25}, "tiled at 0.25"),
    ],
)
def test_features_that_do_not_match_are_refused(kwargs, match):
    from mmpath.models.slide_encoders import check_slide_features

    with pytest.raises(DataError, match=match):
        check_slide_features(_table(**kwargs), "titan", use_rep="X_f")
    assert check_slide_features(_table(), "titan", use_rep="X_f").name == "titan"


def test_remote_code_is_opt_in_and_offline_fails_in_one_line(monkeypatch):
    import mmpath as mm
    from mmpath.models.slide_encoders import create_slide_encoder

    with pytest.raises(ModelError, match="trust_remote_code=True"):
        create_slide_encoder("titan")
    with pytest.raises(ModelError, match="trust_remote_code"):
        mm.tl.embed_slides(_table(), "titan", use_rep="X_f")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="gated"):
        create_slide_encoder("titan", trust_remote_code=True)


def test_titan_call_passes_features_coords_and_level0_patch_size():
    import torch

    from mmpath.models.slide_encoders import LoadedSlideEncoder, slide_encoders

    seen = {}

    class Stub(torch.nn.Module):
        def encode_slide_from_patch_features(self, x, c, size):
            seen.update(x=x.shape, c=c[0, :2].tolist(), size=size)
            return x.mean(1)

    enc = LoadedSlideEncoder(slide_encoders.get("titan").meta, Stub(), "cpu")
    t = _table()
    z = enc.encode(t.obsm["X_f"], t.obs[[K.X, K.Y]].to_numpy(), 1024)
    assert seen == {"x": (1, 6, 768), "c": [[0, 0], [1024, 0]], "size": 1024}
    np.testing.assert_allclose(z, t.obsm["X_f"].mean(0), rtol=1e-5)


def test_cli_embed_slides_refuses_wrong_features(tmp_path, capsys):
    from mmpath.cli import main

    _table(width=1024, encoder="uni").write_h5ad(tmp_path / "t.h5ad")
    rc = main(
        [
            "embed-slides",
            str(tmp_path / "t.h5ad"),
            "--encoder",
            "titan",
            "--use-rep",
            "X_f",
            "-o",
            str(tmp_path / "s.h5ad"),
        ]
    )
    assert rc == 2
    assert "titan needs conch_v15" in capsys.readouterr().err
