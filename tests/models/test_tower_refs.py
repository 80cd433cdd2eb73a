"""Model folders that refer to a locked tower by registry name instead of storing it."""

from __future__ import annotations

import pytest
import torch
import yaml

import mmpath.models as M
from mmpath.errors import WeightsError
from mmpath.models.encoders.pair import pair_family


@pytest.fixture(scope="module")
def lit():
    torch.manual_seed(0)
    enc = pair_family("tiny_vit", "minilm", proj_dim=16)
    enc.text.requires_grad_(False)
    return enc.eval()


def test_referenced_tower_round_trip_embeds_identically(lit, tmp_path):
    folder = M.save_encoder(lit, tmp_path / "lit", name="lit_ref", refer={"text": "minilm"})
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["kwargs"]["text"] == {"ref": "minilm", "kwargs": {}}
    assert not (folder / "text").exists()
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    assert size_mb < 1.0  # MiniLM alone is ~90 MB
    assert lit.refs == {}  # saving does not change the encoder

    back = M.create_encoder(f"local-dir:{folder}")
    assert back.refs == {"text": {"ref": "minilm", "kwargs": {}}}
    x = torch.rand(2, 3, 112, 112)
    texts = ["dense nuclei", "background glass"]
    with torch.no_grad():
        a, b = lit.encode_image(x), back.encode_image(x)
        ta = lit.encode_text(lit.tokenize(texts))
        tb = back.encode_text(back.tokenize(texts))
    torch.testing.assert_close(a.proj, b.proj, rtol=0, atol=0)
    torch.testing.assert_close(ta, tb, rtol=0, atol=0)

    again = M.save_encoder(back, tmp_path / "again")  # a loaded reference stays a reference
    assert yaml.safe_load((again / "config.yaml").read_text())["kwargs"]["text"]["ref"] == "minilm"


def test_missing_referenced_weights_is_a_clear_weights_error(lit, tmp_path, monkeypatch):
    folder = M.save_encoder(lit, tmp_path / "lit", refer={"text": "minilm"})
    path = folder / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["kwargs"]["text"] = {"ref": "uni", "kwargs": {}}  # weights not on this machine
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MMPATH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"model folder .*referenced tower 'uni'"):
        M.create_encoder(f"local-dir:{folder}")
    config["kwargs"]["text"] = {"ref": "no_such_model", "kwargs": {}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(WeightsError, match="not a registered encoder"):
        M.create_encoder(f"local-dir:{folder}")


def test_refer_refuses_a_tower_that_is_not_the_entry(tmp_path):
    torch.manual_seed(0)
    enc = pair_family("tiny_vit", "minilm", proj_dim=8)
    with torch.no_grad():
        next(enc.text.parameters()).add_(1.0)  # "trained": no longer MiniLM's weights
    with pytest.raises(WeightsError, match="differs from 'minilm'"):
        M.save_encoder(enc, tmp_path / "bad", refer={"text": "minilm"})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(WeightsError, match="only applies to pair"):
        M.save_encoder(M.create_encoder("tiny_vit"), tmp_path / "v", refer={"text": "minilm"})
