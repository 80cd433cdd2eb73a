"""Registry, create_encoder name forms, list_encoders, and the encoder contract."""

from __future__ import annotations

import pytest
import torch

import mmpath.models as M
from mmpath.errors import ModelError

TINY = ["tiny_vit", "tiny_text", "tiny_clip"]


def test_every_entry_is_listed_with_its_metadata():
    df = M.list_encoders()
    expected = {
        "uni",
        "uni2",
        "conch",
        "plip",
        "quiltnet",
        "phikon",
        "phikon-v2",
        "virchow2",
        "h-optimus-0",
        "prov-gigapath",
        "minilm",
        *TINY,
    }
    assert expected <= set(df["name"])
    row = df.set_index("name").loc["virchow2"]
    assert (row["kind"], row["dim"], row["input_size"], row["mpp"]) == ("image", 2560, 224, 0.5)
    assert not row["verified"]
    assert df.set_index("name").loc["tiny_vit", "weights"] == "random"
    assert list(M.list_encoders("tiny*")["name"]) == sorted(TINY)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown encoder 'unii'.*mmpath list"):
        M.create_encoder("unii")
    with pytest.raises(ModelError, match="open_clip architecture"):
        M.create_encoder("open_clip:NoSuchArch")


def test_text_to_an_image_only_encoder_is_a_clear_error():
    enc = M.create_encoder("tiny_vit")
    with pytest.raises(ModelError, match="no text tower"):
        enc.tokenize(["tumor"])


def test_alias_and_instance_pass_through():
    enc = M.create_encoder("tiny_vit")
    assert M.create_encoder(enc) is enc
    assert M.encoders.resolve("gigapath") == "prov-gigapath"


def test_timm_and_open_clip_prefixes_build_random_models():
    enc = M.create_encoder("timm:vit_tiny_patch16_224", img_size=32, depth=1)
    assert enc.info.name == "timm:vit_tiny_patch16_224" and enc.info.embed_dim == 192
    out = enc.encode_image(torch.randn(1, 3, 32, 32))
    assert out.features.shape == (1, 192) and out.proj is None
    meta = M.create_encoder("open_clip:ViT-B-32", device="meta")
    assert meta.info.proj_dim == 512
    assert next(meta.parameters()).device.type == "meta"


def _contract_encoders(minilm):
    yield "tiny_vit", M.create_encoder("tiny_vit")
    yield "tiny_text", M.create_encoder("tiny_text")
    yield "tiny_clip", M.create_encoder("tiny_clip")
    yield "minilm", minilm


@pytest.fixture(scope="module")
def contract(minilm):
    torch.manual_seed(0)
    return dict(_contract_encoders(minilm))


@pytest.mark.parametrize("name", [*TINY, "minilm"])
def test_encoder_contract(contract, name):
    enc = contract[name]
    info = enc.info
    assert not enc.training
    if info.has_image:
        size = info.data.input_size
        x = torch.randn(3, 3, size, size)
        with torch.inference_mode():
            a, b = enc.encode_image(x), enc.encode_image(x)
            maps = enc.forward_intermediates(x, 2)
        assert a.features.shape == (3, info.embed_dim)
        assert torch.equal(a.features, b.features)  # deterministic in eval mode
        if info.kind == "image-text":
            assert a.proj.shape == (3, info.proj_dim)
            torch.testing.assert_close(a.proj.norm(dim=1), torch.ones(3))
        else:
            assert a.proj is None
        assert len(maps) == 2 and all(m.ndim == 4 and m.shape[0] == 3 for m in maps)
        assert maps[-1].shape[-2:] == (size // 16, size // 16)
    if info.has_text:
        tokens = enc.tokenize(["tumor epithelium", "adipose tissue", "stroma"])
        with torch.inference_mode():
            t = enc.encode_text(tokens)
        dim = info.proj_dim or info.embed_dim
        assert t.shape == (3, dim)
        torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    else:
        with pytest.raises(ModelError):
            enc.tokenize(["x"])


def test_tiny_models_embed_a_batch_fast():
    import time

    enc = M.create_encoder("tiny_clip")
    x = torch.randn(8, 3, 112, 112)
    with torch.inference_mode():
        enc.encode_image(x)
        t0 = time.perf_counter()
        enc.encode_image(x)
        dt = time.perf_counter() - t0
    assert dt < 2.0  # generous: 2 shared cores; typically tens of ms


def test_cli_list_says_which_entries_never_ran_on_real_weights(capsys):
    from mmpath.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "virchow2" in out and "never run on their real weights:" in out
    never = out.split("never run on their real weights:")[1]
    assert "uni" in never and "minilm" not in never and "tiny_vit" not in never
    assert "mmpath-demo-vit" not in never and "mmpath-demo-lit" not in never  # shipped weights
    assert main(["list", "encoders", "tiny*"]) == 0
    assert "uni" not in capsys.readouterr().out.split("\n", 1)[1].split("encoders")[0]


def test_cli_weights_install_rejects_missing_folder(tmp_path, capsys):
    from mmpath.cli import main

    assert main(["weights", "install", "uni", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
