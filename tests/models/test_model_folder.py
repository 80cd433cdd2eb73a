"""One model-folder format (config.yaml + model.safetensors + sha256) for heads and expression
models; folders written before it (by the code of main at 7fc22f7, in tests/data) still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

LEGACY = Path(__file__).parents[1] / "data" / "legacy_folders"


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


def test_legacy_head_folders_load(tmp_path):
    from mmpath.models.heads import load_trained_head

    vae_dir = _copy("head_vae", tmp_path)
    assert sorted(p.name for p in vae_dir.iterdir()) == ["head.yaml", "model.safetensors"]
    head = load_trained_head(vae_dir, kind="anomaly")
    assert head.tile_size == 8 and head.extra == {"note": "legacy"}
    io = torch.load(LEGACY / "head_vae_io.pt")
    with torch.no_grad():
        torch.testing.assert_close(head.model(io["x"]).recon, io["recon"])
    mil = load_trained_head(_copy("head_mil", tmp_path), kind="mil")
    assert mil.class_names == ("a", "b") and mil.model.config.kind == "mean-mlp"
    with pytest.raises(Exception, match="anomaly"):
        load_trained_head(LEGACY / "head_vae", kind="seg")


@pytest.mark.parametrize("method", ["ridge", "mlp"])
def test_legacy_expression_folders_load_and_predict_the_same(tmp_path, method):
    from mmpath.tl.expression._model import ExpressionModel

    folder = _copy(f"expr_{method}", tmp_path)
    model = ExpressionModel.load(folder)
    assert model.genes == ["g1", "g2", "g3"] and model.method == method
    X = np.load(LEGACY / "expr_X.npy")
    np.testing.assert_allclose(
        model.predict_arrays(X), np.load(LEGACY / f"expr_{method}_pred.npy"), atol=1e-6
    )
    # saving over an old folder is allowed and writes the one format
    model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model.safetensors"]
    again = ExpressionModel.load(folder)
    np.testing.assert_array_equal(again.predict_arrays(X), model.predict_arrays(X))


def test_heads_and_expression_models_write_the_one_format(tmp_path):
    from mmpath.io._digest import sha256_file
    from mmpath.models.heads import (
        TrainedHead,
        VAEConfig,
        VAEHead,
        load_trained_head,
        save_trained_head,
    )
    from mmpath.tl.expression._model import ExpressionModel

    vae = VAEHead(VAEConfig(image_size=8, latent_dim=2, base_channels=4)).eval()
    folder = save_trained_head(TrainedHead("anomaly", vae, (), 8), tmp_path / "h")
    expr = ExpressionModel.load(LEGACY / "expr_ridge").save(tmp_path / "e")
    for path, fmt, kind in (
        (folder, "mmpath-head", "anomaly"),
        (expr, "mmpath-expression", "ridge"),
    ):
        assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "model.safetensors"]
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        assert (cfg["format"], cfg["kind"]) == (fmt, kind)
        assert cfg["sha256"] == sha256_file(path / "model.safetensors")
    assert yaml.safe_load((expr / "config.yaml").read_text())["genes"] == ["g1", "g2", "g3"]
    # a changed weights file is refused by its sha256, with one clear line
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"):
        load_trained_head(folder, kind="anomaly")


def test_one_sha256_helper():
    import hashlib

    from mmpath.index import _store
    from mmpath.io._digest import sha256_file
    from mmpath.models import folder

    path = LEGACY / "expr_X.npy"
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _store.sha256 is sha256_file and folder.sha256_file is sha256_file
