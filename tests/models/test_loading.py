"""Every loading path, offline, on tiny random weights saved in the real public formats."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import mmpath.models as M
from mmpath.errors import ConfigError, ModelError, WeightsError
from mmpath.models.registry import encoders, register_encoder
from mmpath.models.weights import WeightsSpec

from .conftest import populate_hf_cache


def _x(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def test_plip_format_save_pretrained(plip_format):
    import transformers

    enc = M.create_encoder("hf-hub:org/tiny-plip", weights=plip_format)
    assert enc.info.kind == "image-text" and enc.info.proj_dim == 32
    assert enc.info.slug == "hf-hub_org_tiny-plip"
    ref = transformers.CLIPModel.from_pretrained(plip_format).eval()
    x = _x(64)
    with torch.inference_mode():
        out = enc.encode_image(x)
        expected = ref(pixel_values=x, input_ids=torch.tensor([[49406, 49407]])).image_embeds
        tokens = enc.tokenize(["tumor", "normal stroma"])
        text = enc.encode_text(tokens)
        want = ref(pixel_values=x[:1], **tokens._asdict()).text_embeds
    torch.testing.assert_close(out.proj, expected)
    torch.testing.assert_close(text, want)
    maps = enc.forward_intermediates(x, [0, 1])
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 2


def test_open_clip_folder_quiltnet_style(open_clip_format):
    from mmpath.models.encoders.clip_open import build_open_clip_model
    from tests.models.conftest import TINY_OPEN_CLIP

    enc = M.create_encoder("hf-hub:org/tiny-quilt", weights=open_clip_format)
    assert enc.info.data.mean == (0.5, 0.5, 0.5) and enc.info.proj_dim == 32
    ref = build_open_clip_model(TINY_OPEN_CLIP["model_cfg"])
    ref.load_state_dict(torch.load(open_clip_format / "open_clip_pytorch_model.bin"))
    ref.eval()
    x = _x(64)
    with torch.inference_mode():
        got = enc.encode_image(x).proj
        want = ref.encode_image(x, normalize=True)
    torch.testing.assert_close(got, want)
    assert enc.forward_intermediates(x, 1)[0].shape == (2, 32, 4, 4)


@pytest.mark.slow
def test_quiltnet_entry_refuses_another_open_clip_model(open_clip_format):
    with pytest.raises(WeightsError, match="embed_dim 32"):
        M.create_encoder("quiltnet", weights=open_clip_format)


def test_timm_folder_uni_style(timm_format):
    import timm
    from safetensors.torch import load_file

    enc = M.create_encoder("hf-hub:org/tiny-uni", weights=timm_format)
    assert enc.info.data.interpolation == "bilinear" and enc.info.embed_dim == 32
    ref = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=0,
        img_size=64,
        embed_dim=32,
        depth=2,
        num_heads=2,
        init_values=1e-5,
        dynamic_img_size=True,
    )
    ref.load_state_dict(load_file(timm_format / "model.safetensors"))
    x = _x(64)
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode_image(x).features, ref.eval()(x))


def test_hf_cache_by_hub_id_offline(hf_cache, plip_format, timm_format):
    populate_hf_cache(hf_cache, "org/tiny-plip", plip_format)
    populate_hf_cache(hf_cache, "org/tiny-uni", timm_format)
    enc = M.create_encoder("hf-hub:org/tiny-plip")
    assert enc.info.proj_dim == 32 and "snapshots" in enc.info.weights
    assert M.create_encoder("hf-hub:org/tiny-uni").info.embed_dim == 32


def test_missing_offline_names_every_place_looked(hf_cache, mmpath_home):
    with pytest.raises(WeightsError) as err:
        M.create_encoder("uni")
    msg = str(err.value)
    assert str(mmpath_home / "weights" / "uni") in msg
    assert "MahmoodLab/UNI" in msg and "HF_HUB_OFFLINE" in msg
    assert "mmpath weights install uni" in msg and "\n" not in msg


def test_resolution_order(tiny_uni_entry, hf_cache, mmpath_home, timm_format, tmp_path):
    from mmpath.cli import main

    snap = populate_hf_cache(hf_cache, "org/tiny-uni", timm_format)
    assert M.create_encoder(tiny_uni_entry).info.weights == str(snap)  # 4. HF cache
    assert main(["weights", "install", tiny_uni_entry, str(timm_format)]) == 0
    home = mmpath_home / "weights" / tiny_uni_entry
    assert (home / "model.safetensors").is_file()
    assert M.create_encoder(tiny_uni_entry).info.weights == str(home)  # 3. MMPATH_HOME wins
    explicit = tmp_path / "w.safetensors"
    explicit.write_bytes((timm_format / "model.safetensors").read_bytes())
    enc = M.create_encoder(tiny_uni_entry, weights=explicit)  # 1. explicit file wins
    assert enc.info.weights == str(explicit)
    assert main(["weights", "install", tiny_uni_entry, str(timm_format)]) == 2  # exists


def test_wrong_dim_weights_are_a_clear_error(plip_format, timm_format):
    with pytest.raises(WeightsError, match="minilm.*(shapes|missing|mis-shaped)"):
        M.create_encoder("minilm", weights=plip_format)
    with pytest.raises(WeightsError, match="shape mismatches.*pos_embed"):
        M.create_encoder("tiny_vit", weights=timm_format / "model.safetensors")


def test_corrupt_file_and_bad_sha256(tmp_path, timm_format):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        M.create_encoder("tiny_vit", weights=bad)
    pt = tmp_path / "model.pth"
    pt.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="corrupt"):
        M.create_encoder("tiny_vit", weights=pt)
    from mmpath.models.weights import read_state_dict

    with pytest.raises(WeightsError, match="sha256"):
        read_state_dict(timm_format / "model.safetensors", sha256="0" * 64)
    with pytest.raises(WeightsError, match="do not exist"):
        M.create_encoder("tiny_vit", weights=tmp_path / "nope.bin")


def test_save_encoder_round_trip_tiny_clip(tmp_path):
    enc = M.create_encoder("tiny_clip")
    with torch.no_grad():
        enc.logit_scale.fill_(3.0)
    folder = M.save_encoder(enc, tmp_path / "clip", name="demo_clip")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model.safetensors"]
    back = M.create_encoder(f"local-dir:{folder}")
    assert back.info.name == "demo_clip" and back.info.slug == "demo_clip"
    assert float(back.logit_scale.detach()) == 3.0
    x = _x(112)
    with torch.inference_mode():
        assert torch.equal(back.encode_image(x).proj, enc.encode_image(x).proj)
        tok = enc.tokenize(["tumor"])
        assert torch.equal(back.encode_text(tok), enc.encode_text(tok))
    assert not list(tmp_path.glob(".clip.tmp-*"))  # atomic: no temporary left
    M.save_encoder(enc, folder)  # a model folder is replaced; any other folder is refused
    with pytest.raises(ConfigError, match="not a saved model"):
        M.save_encoder(enc, tmp_path)
    assert (folder / "config.yaml").is_file()


def test_save_encoder_round_trip_lit_with_minilm(tmp_path, minilm):
    text = minilm
    lit = M.families.create("pair", image="tiny_vit", text=text, proj_dim=16)
    folder = M.save_encoder(lit, tmp_path / "lit")
    assert (folder / "text" / "config.json").is_file()
    assert (folder / "text" / "tokenizer.json").is_file()
    back = M.load_encoder(folder)
    x = _x(112)
    with torch.inference_mode():
        assert torch.equal(back.encode_image(x).proj, lit.encode_image(x).proj)
        tok = lit.tokenize(["tumor", "fat"])
        torch.testing.assert_close(
            back.encode_text(back.tokenize(["tumor", "fat"])), lit.encode_text(tok)
        )


def test_local_dir_errors(tmp_path):
    with pytest.raises(WeightsError, match="not an mmpath model folder"):
        M.create_encoder(f"local-dir:{tmp_path}")
    enc = M.create_encoder("tiny_vit")
    folder = M.save_encoder(enc, tmp_path / "vit")
    (folder / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(WeightsError, match="sha256|corrupt"):
        M.create_encoder(f"local-dir:{folder}")


def test_conch_entry_says_what_to_install_when_missing(monkeypatch):
    meta = encoders.get("conch").meta
    monkeypatch.setitem(
        encoders._entries,
        "conch",
        dataclasses.replace(
            encoders.get("conch"),
            meta=dataclasses.replace(meta, requires="package_that_is_not_installed"),
        ),
    )
    with pytest.raises(ModelError, match="conch-fork"):
        M.create_encoder("conch")
    df = M.list_encoders("conch")
    assert not df["available"].iloc[0]


def test_weights_install_by_hub_id_uses_the_alias(mmpath_home, hf_cache, plip_format):
    from mmpath.cli import main
    from mmpath.cli.models import install_name

    assert install_name("vinid/plip") == "plip" and install_name("org/x") == "org--x"
    assert M.list_encoders("plip")["weights"].iloc[0] == "missing"
    # the tiny test CLIP is not PLIP: install checks shapes against PLIP built on meta
    assert main(["weights", "install", "vinid/plip", str(plip_format)]) == 2
    assert not (mmpath_home / "weights" / "plip").exists()
    # copied by hand (not checked): "found", not "verified"
    shutil.copytree(plip_format, mmpath_home / "weights" / "plip")
    assert M.list_encoders("plip")["weights"].iloc[0] == "found"


def _old_vit_names(key: str) -> str:
    """transformers 4.x ViT parameter names (what owkin/phikon's checkpoint holds)."""
    for new, old in (
        ("layers.", "encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ):
        key = key.replace(new, old)
    return key


def test_phikon_format_old_transformers_checkpoint(tmp_path):
    """A ViTModel checkpoint with 4.x names and a pooler loads into the pinned architecture."""
    import transformers
    from safetensors.torch import save_file

    from mmpath.models.encoders.hf import HFVisionEncoder

    cfg = dict(
        model_type="vit",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
    )
    vit_cfg = transformers.ViTConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    ref = transformers.ViTModel(vit_cfg, add_pooling_layer=True).eval()
    state = {_old_vit_names(k): v.contiguous() for k, v in ref.state_dict().items()}
    assert "encoder.layer.0.attention.attention.query.weight" in state
    folder = tmp_path / "phikon"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    ref.config.save_pretrained(folder)
    info = M.EncoderInfo("test_tiny_phikon", "image", 32)
    register_encoder("test_tiny_phikon", info, weights=WeightsSpec(hub_id="org/tiny-phikon"))(
        lambda: HFVisionEncoder(config=cfg, info=info)
    )
    try:
        enc = M.create_encoder("test_tiny_phikon", weights=folder)
    finally:
        del encoders._entries["test_tiny_phikon"]
    x = _x(32)
    with torch.inference_mode():
        want = ref(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(enc.encode_image(x).features, want)
    assert [tuple(m.shape) for m in enc.forward_intermediates(x, 2)] == [(2, 32, 2, 2)] * 2


def test_saved_model_folders_get_the_users_default_permissions(tmp_path):
    """safetensors writes 0600 files; a lab sharing a results folder must be able to read."""
    import os
    import stat

    from mmpath.models import create_encoder, save_encoder

    umask = os.umask(0o022)
    os.umask(umask)
    folder = save_encoder(create_encoder("tiny_vit"), tmp_path / "model")
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
