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


# --- FEATHER, built here (issue 16) ---------------------------------------------------------


def _feather_reference_state(seed=0, n_classes=108):
    """A FEATHER checkpoint in MIL-Lab's names (random values, the published shapes)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    return {
        "model.patch_embed.0.weight": r(512, 768),
        "model.patch_embed.0.bias": r(512),
        "model.global_attn.attention_a.0.weight": r(384, 512),
        "model.global_attn.attention_a.0.bias": r(384),
        "model.global_attn.attention_b.0.weight": r(384, 512),
        "model.global_attn.attention_b.0.bias": r(384),
        "model.global_attn.attention_c.weight": r(1, 384),
        "model.global_attn.attention_c.bias": r(1) + 3.0,
        "model.classifier.weight": r(n_classes, 512),
        "model.classifier.bias": r(n_classes),
    }


def test_feather_is_built_offline_at_full_size():
    pytest.importorskip("torchmil")
    from mmpath.models.slide_encoders import build_slide_encoder, slide_encoders

    spec = slide_encoders.get("feather").meta
    assert (spec.offline, spec.remote_code, spec.feature_dim, spec.out_dim) == (
        True,
        False,
        768,
        512,
    )
    m = build_slide_encoder("feather")
    assert next(m.parameters()).device.type == "meta"
    # every tensor of the embedding path of the published checkpoint has its place and shape
    own = m.state_dict()
    from mmpath.models.slide_feather import FEATHER_KEYS

    ref = _feather_reference_state()
    for ref_key, our_key in FEATHER_KEYS.items():
        assert tuple(own[our_key].shape) == tuple(ref[ref_key].shape), ref_key
    assert sum(p.numel() for p in m.parameters()) == 788096  # + 55,404 head = MIL-Lab's 0.9M
    for name in ("titan", "prism", "gigapath-slide"):
        with pytest.raises(ModelError, match="cannot be built offline"):
            build_slide_encoder(name)


def test_feather_equals_the_reference_abmil_formula():
    """MIL-Lab's ABMIL.forward_features, written out: relu(xW+b), gated scores with the bias
    of attention_c, softmax over tiles, weighted sum."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmil")
    from mmpath.models.slide_encoders import build_slide_encoder

    state = _feather_reference_state(1)
    m = build_slide_encoder("feather", device="cpu").eval()
    m.load_reference_state(state)
    x = torch.randn(2, 50, 768, generator=torch.Generator().manual_seed(2))
    s = state
    h = torch.relu(x @ s["model.patch_embed.0.weight"].T + s["model.patch_embed.0.bias"])
    a = torch.tanh(
        h @ s["model.global_attn.attention_a.0.weight"].T
        + s["model.global_attn.attention_a.0.bias"]
    )
    b = torch.sigmoid(
        h @ s["model.global_attn.attention_b.0.weight"].T
        + s["model.global_attn.attention_b.0.bias"]
    )
    score = (a * b) @ s["model.global_attn.attention_c.weight"].T
    score = score + s["model.global_attn.attention_c.bias"]
    want = (torch.softmax(score.transpose(1, 2), -1) @ h).squeeze(1)
    with torch.no_grad():
        got, extra = m.forward_features(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert extra["attention"].shape == (2, 50)
    # through the loaded-encoder call used by embed-slides (the else branch: forward_features)
    from mmpath.models.slide_encoders import LoadedSlideEncoder, slide_encoders

    enc = LoadedSlideEncoder(slide_encoders.get("feather").meta, m, "cpu")
    z = enc.encode(x[0].numpy(), np.zeros((50, 2)), 1024)
    np.testing.assert_allclose(z, want[0].numpy(), rtol=1e-5, atol=1e-6)


def test_feather_refuses_a_checkpoint_of_another_model(monkeypatch):
    pytest.importorskip("torchmil")
    from mmpath.models.slide_encoders import build_slide_encoder, create_slide_encoder

    m = build_slide_encoder("feather", device="cpu")
    bad = {**_feather_reference_state(), "model.extra.weight": np.zeros(1)}
    with pytest.raises(WeightsError, match="does not have"):
        m.load_reference_state(bad)
    short = _feather_reference_state()
    del short["model.patch_embed.0.bias"]
    with pytest.raises(WeightsError):
        m.load_reference_state(short)
    # no remote code needed; offline without the files: one line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-mmpath-cache")
    with pytest.raises(WeightsError, match="feather"):
        create_slide_encoder("feather")


def test_cli_embed_slides_with_feather_weights_file(tmp_path, capsys):
    """A user's run: FEATHER weights on disk (MIL-Lab names) -> one 512-d vector per slide,
    equal to the reference formula on all of the slide's tiles."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmil")
    from safetensors.torch import save_file

    import mmpath as mm
    from mmpath.cli import main
    from mmpath.models.slide_encoders import build_slide_encoder

    state = _feather_reference_state(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    table = _table(n=12)
    table.write_h5ad(tmp_path / "t.h5ad")
    args = ["embed-slides", str(tmp_path / "t.h5ad"), "--encoder", "feather", "--use-rep"]
    args += ["X_f", "--weights", str(tmp_path), "-o", str(tmp_path / "s.h5ad"), "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    slides = mm.io.read_h5ad(tmp_path / "s.h5ad")
    z = np.asarray(slides.obsm["X_feather"])
    assert z.shape == (1, 512)
    ref = build_slide_encoder("feather", device="cpu").eval()
    ref.load_reference_state(state)
    with torch.no_grad():
        want = ref(torch.from_numpy(table.obsm["X_f"])[None]).numpy()
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)
    # weights= is refused for the encoders that load with their authors' code
    from mmpath.models.slide_encoders import create_slide_encoder

    with pytest.raises(ModelError, match="built here"):
        create_slide_encoder("titan", trust_remote_code=True, weights=str(tmp_path))
