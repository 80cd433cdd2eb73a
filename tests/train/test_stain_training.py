"""Stain normalisation in training configs: data.stain + data.stain_target normalise every
training image, the fitted target lands in the model folder, and tl.embed with that model
normalises the same way at inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import mmpath as mm
from mmpath.train import fit, get_task
from mmpath.train.data import TableConfig, load_table
from mmpath.train.dist import DistEnv

from .train_helpers import make_config


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("stain_train")
    with mm.datasets.sample_slide() as s:
        img = s.read_region((400, 600), 0, (768, 768))
    folder = root / "img"
    folder.mkdir()
    for i in range(16):
        y, x = divmod(i, 4)
        Image.fromarray(img[y * 192 : y * 192 + 64, x * 192 : x * 192 + 64]).save(
            folder / f"c{i:02d}.png"
        )
    ref = np.clip(img[:512, :512].astype(np.float32) * (0.85, 0.9, 1.05), 0, 255)
    Image.fromarray(ref.astype(np.uint8)).save(root / "ref.png")
    return root


def test_config_checks():
    with pytest.raises(ValueError, match="go together"):
        TableConfig(stain="macenko")
    with pytest.raises(ValueError, match="macenko or reinhard"):
        TableConfig(stain="vahadane", stain_target="x.png")


def test_load_table_normalises_every_image(crops):
    cfg = TableConfig(stain="macenko", stain_target=str(crops / "ref.png"))
    table = load_table([str(crops / "img")], cfg, captions=False)
    files = sorted((crops / "img").iterdir())
    raws = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    dark = [(r.min(-1) < 200).mean() for r in raws]
    i, j = int(np.argmax(dark)), int(np.argmin(dark))
    want = mm.pp.normalize_stain(raws[i], table.stain)
    np.testing.assert_array_equal(table.read(i), want)
    assert np.abs(want.astype(int) - raws[i]).mean() > 2  # it did change colours
    if dark[j] < 0.05:  # a crop of glass has no stain to fit: read as it is
        np.testing.assert_array_equal(table.read(j), raws[j])


def test_model_folder_carries_the_target_to_inference(crops, tmp_path):
    overrides = {
        "out": str(tmp_path / "run"),
        "data.train": f"[{crops / 'img'}]",
        "data.input_size": 32,
        "data.val_fraction": 0.25,
        "data.stain": "macenko",
        "data.stain_target": str(crops / "ref.png"),
        "model.name": "tiny_vit",
        "model.pretrained": "false",
        "model.head_hidden": 16,
        "model.head_dim": 8,
        "train.batch_size": 6,
        "train.epochs": 1,
        "train.quiet": "true",
    }
    cfg = make_config("ssl", [f"{k}={v}" for k, v in overrides.items()])
    result = fit(get_task("ssl").build(cfg, DistEnv()), cfg)
    saved = json.loads((result.model_dir / "stain_target.json").read_text())
    target = mm.pp.fit_stain_target(crops / "ref.png", method="macenko")
    assert saved == target.to_dict()

    with mm.datasets.sample_slide() as s:
        tiles = mm.pp.tile(s, 64, mpp=0.5, min_tissue=0.8)[:4]
    mm.io.write_h5ad(tiles, tmp_path / "t.h5ad")
    auto = mm.io.read_h5ad(tmp_path / "t.h5ad")
    mm.tl.embed(auto, f"local-dir:{result.model_dir}", num_workers=0, key_added="X_m")
    assert auto.uns["mmpath"]["embeddings"]["X_m"]["stain"] == target.to_dict()
    explicit = mm.io.read_h5ad(tmp_path / "t.h5ad")
    mm.tl.embed(
        explicit, f"local-dir:{result.model_dir}", num_workers=0, key_added="X_m", stain=target
    )
    np.testing.assert_allclose(auto.obsm["X_m"], explicit.obsm["X_m"], atol=1e-5)
