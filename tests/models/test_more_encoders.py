"""Issue 16's extra patch encoders: the pieces written here, the opt-ins and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmpath.models as M
from mmpath.errors import ModelError
from mmpath.models.encoders.pathology_more import AttentionalPooler, dino_interpolate_pos


def test_attentional_pooler_equals_torch_multihead_attention():
    torch.manual_seed(0)
    pool = AttentionalPooler(d_model=32, context_dim=48, n_head=4, n_queries=1).eval()
    x = torch.randn(3, 10, 48)
    mha = torch.nn.MultiheadAttention(32, 4, kdim=48, vdim=48, bias=False, batch_first=True)
    with torch.no_grad():
        mha.q_proj_weight.copy_(pool.to_q.weight)
        mha.k_proj_weight.copy_(pool.to_kv.weight[:32])
        mha.v_proj_weight.copy_(pool.to_kv.weight[32:])
        mha.out_proj.weight.copy_(pool.to_out.weight)
        kv = pool.ln_k(x)
        q = pool.ln_q(pool.query).expand(3, -1, -1)
        ref = mha(q, kv, kv, need_weights=False)[0]
        ours = pool(x)
    assert ours.shape == (3, 1, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_attentional_pooler_equals_the_reference_einsum_math():
    """The authors' formulation: per-head q·k scaled, max-subtracted softmax, then v."""
    torch.manual_seed(1)
    pool = AttentionalPooler(d_model=16, context_dim=24, n_head=2, n_queries=1).eval()
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        xk = pool.ln_k(x)[:, None]  # b 1 n d
        q = pool.to_q(pool.ln_q(pool.query))[None, None].expand(2, 1, -1, -1)
        k, v = pool.to_kv(xk).chunk(2, dim=-1)

        def heads(t):  # b t n (h d) -> b h t n d
            b, t_, n, _ = t.shape
            return t.reshape(b, t_, n, 2, -1).permute(0, 3, 1, 2, 4)

        q, k, v = heads(q) * (8**-0.5), heads(k), heads(v)
        sim = torch.einsum("...id,...jd->...ij", q, k)
        attn = (sim - sim.amax(-1, keepdim=True)).softmax(-1)
        out = torch.einsum("...ij,...jd->...id", attn, v)
        out = out.permute(0, 2, 3, 1, 4).reshape(2, 1, 1, 16)
        ref = pool.to_out(out).squeeze(1)
        torch.testing.assert_close(pool(x), ref, rtol=1e-5, atol=1e-5)


def test_dino_interpolation_is_the_reference_formula():
    torch.manual_seed(2)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    out = dino_interpolate_pos(pos, (28, 28))
    assert out.shape == (1, 1 + 28 * 28, 8)
    grid = pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(28.1 / 14, 28.1 / 14), mode="bicubic")
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 8))
    torch.testing.assert_close(out[:, :1], pos[:, :1])
    assert dino_interpolate_pos(pos, (14, 14)) is pos
    # and timm's own resampling is measurably different: the override matters
    from timm.layers import resample_abs_pos_embed

    timm_way = resample_abs_pos_embed(pos, new_size=(28, 28), num_prefix_tokens=1)
    assert (timm_way - out).abs().max() > 1e-3


def test_dino_pos_embed_override_on_a_timm_vit():
    """The override CONCH v1.5's trunk carries, on a small timm ViT of the same layout."""
    import types

    import timm

    from mmpath.models.encoders.pathology_more import _dino_pos_embed

    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=64,
        init_values=1.0,
        dynamic_img_size=True,
    ).eval()
    vit._pos_embed = types.MethodType(_dino_pos_embed, vit)
    x = torch.randn(1, 8, 8, 192)  # NHWC patch grid of a 128 px input
    with torch.no_grad():
        got = vit._pos_embed(x)
        want = torch.cat([vit.cls_token, x.reshape(1, 64, 192)], 1) + dino_interpolate_pos(
            vit.pos_embed, (8, 8)
        )
        torch.testing.assert_close(got, want)
        feats = vit.forward_features(torch.randn(1, 3, 128, 128))  # the whole trunk runs
    assert feats.shape == (1, 65, 192)


@pytest.mark.slow
def test_conch_v15_full_size_load_and_forward():
    enc = M.create_encoder("conch_v15", pretrained=False)
    assert enc.model.trunk._pos_embed.__func__.__name__ == "_dino_pos_embed"
    # a checkpoint with a 448 px table is resampled to the 14x14 table, as the reference does
    state = {k: v.clone() for k, v in enc.model.state_dict().items()}
    state["trunk.pos_embed"] = torch.randn(1, 785, 1024)
    enc.load_checkpoint(state)
    assert tuple(enc.model.trunk.pos_embed.shape) == (1, 197, 1024)
    with torch.no_grad():
        out = enc.encode_image(torch.randn(1, 3, 64, 64)).features
    assert out.shape == (1, 768) and torch.isfinite(out).all()
    # ln_contrast is the last op: each output row is layer-normed
    assert abs(float(out.mean())) < 1e-4 and math.isclose(float(out.std()), 1.0, rel_tol=0.01)


def test_hf_vision_cls_plus_mean_pooling():
    from mmpath.models.encoders.hf import HFVisionEncoder

    cfg = {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
        "use_swiglu_ffn": True,
    }
    enc = HFVisionEncoder(config=cfg, pooling="cls+mean").eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = enc.model(pixel_values=x).last_hidden_state
        feats = enc.encode_image(x).features
    assert feats.shape == (2, 64) and enc.info.embed_dim == 64
    torch.testing.assert_close(feats, torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], -1))
    with pytest.raises(ValueError, match="pooling"):
        HFVisionEncoder(config=cfg, pooling="max")


def test_hf_vision_pooling_survives_save_and_reload(tmp_path):
    from mmpath.models.encoders.hf import HFVisionEncoder

    cfg = {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    }
    enc = HFVisionEncoder(config=cfg, pooling="cls+mean").eval()
    M.save_encoder(enc, tmp_path / "m")
    again = M.create_encoder(f"local-dir:{tmp_path / 'm'}")
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x).features, enc.encode_image(x).features)
    assert again.info.embed_dim == 64


@pytest.mark.parametrize("name", ["hibou-l", "keep"])
def test_remote_code_is_an_explicit_opt_in(name, monkeypatch):
    monkeypatch.delenv("MMPATH_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(ModelError, match="trust_remote_code=True"):
        M.create_encoder(name, pretrained=False)
    enc = M.create_encoder(name, pretrained=False, trust_remote_code=True)
    with pytest.raises(ModelError, match="remote code"):  # nothing is built before the files
        enc.encode_image(torch.zeros(1, 3, 224, 224))
    monkeypatch.setenv("MMPATH_TRUST_REMOTE_CODE", f"other, {name}")
    assert M.create_encoder(name, pretrained=False).info.name == name


def test_musk_without_its_package_says_what_to_install():
    row = M.list_encoders("musk").iloc[0]
    if row["available"]:
        pytest.skip("the musk package is installed")
    with pytest.raises(ModelError, match="git\\+https://github.com/lilab-stanford/MUSK"):
        M.create_encoder("musk", pretrained=False)


def test_list_shows_licence_and_gating_of_the_new_entries():
    df = M.list_encoders("*").set_index("name")
    for name in ("h-optimus-1", "h0-mini", "conch_v15", "hibou-l", "musk"):
        assert "gated" in df.loc[name, "license"], name
    assert df.loc["midnight", "license"] == "MIT (not gated)"
    assert "not gated" in df.loc["gpfm", "license"]
    assert "remote code" in df.loc["keep", "license"]
    assert not df.loc[["gpfm", "midnight", "omiclip", "conch_v15"], "verified"].any()
