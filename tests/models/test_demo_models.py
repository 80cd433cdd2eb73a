"""The demo models shipped in the package: offline loading, documented sizes, real zero-shot."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import mmpath.models as M
from mmpath.models.encoders.demo import DEMO_LIT_CLASSES, DEMO_MPP, packaged_model_dir
from mmpath.tl.zeroshot import class_embeddings

NAMES = ("mmpath-demo-vit", "mmpath-demo-lit")


@pytest.fixture(scope="module")
def offline_env():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("MMPATH_HOME", "/nonexistent/mmpath-home")  # only the package can supply them
    yield
    mp.undo()


@pytest.fixture(scope="module")
def lit(offline_env):
    return M.create_encoder("demo-lit")


def _card_params(name: str) -> int:
    card = (packaged_model_dir(name) / "README.md").read_text(encoding="utf-8")
    assert "not a foundation model" in card.lower() and "not diagnostic" in card.lower()
    return int(re.search(r"([\d,]+) parameters", card).group(1).replace(",", ""))


def test_shipped_folders_fit_the_budget_and_are_package_data():
    total = 0
    for name in NAMES:
        folder = packaged_model_dir(name)
        assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
        total += sum(f.stat().st_size for f in folder.iterdir())
    assert total <= 20e6
    table = M.list_encoders("mmpath-demo-*").set_index("name")
    assert list(table.loc[list(NAMES), "weights"]) == ["found", "found"]
    assert set(table.loc[list(NAMES), "mpp"]) == {DEMO_MPP}


def test_demo_vit_loads_offline_with_documented_size(offline_env):
    enc = M.create_encoder("demo-vit")
    params = sum(p.numel() for p in enc.parameters())
    assert params == _card_params("mmpath-demo-vit") and params <= 5_000_000
    assert (enc.info.name, enc.info.embed_dim, enc.info.data.input_size) == (
        "mmpath-demo-vit",
        128,
        112,
    )
    assert enc.info.data.mpp == DEMO_MPP
    assert str(packaged_model_dir("mmpath-demo-vit")) in enc.info.weights
    out = enc.encode_image(torch.zeros(2, 3, 112, 112))
    assert out.features.shape == (2, 128) and torch.isfinite(out.features).all()


def test_demo_lit_loads_offline_and_image_tower_is_the_documented_vit(lit):
    assert lit.info.kind == "image-text" and lit.info.proj_dim == 128
    assert lit.info.data.mpp == DEMO_MPP
    assert lit.refs["text"]["ref"] == "minilm"  # MiniLM is referenced, not stored
    image_params = sum(p.numel() for p in lit.image.parameters())
    assert image_params == _card_params("mmpath-demo-vit")


def _tile(kind: str, rng: np.random.Generator) -> np.ndarray:
    """112 px RGB: glass, or pink tissue with dense purple nuclei."""
    size = 112
    if kind == "glass":
        img = np.full((size, size, 3), 238.0) + rng.normal(0, 3, (size, size, 3))
        return np.clip(img, 0, 255).astype(np.uint8)
    img = np.empty((size, size, 3))
    img[:] = (232, 150, 200)  # eosin pink
    img += rng.normal(0, 8, img.shape)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(70):  # dense nuclei: ~70 blobs of radius 4-6 px
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 6)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (85, 45, 135)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_demo_lit_zero_shot_separates_glass_from_dense_nuclei(lit):
    rng = np.random.default_rng(0)
    kinds = ["glass"] * 4 + ["dense"] * 4
    images = np.stack([_tile(k, rng) for k in kinds]).astype(np.float32) / 255.0
    mean = torch.tensor(lit.info.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(lit.info.data.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std
    with torch.no_grad():
        proj = lit.encode_image(x).proj.numpy()
    classes = ["background glass", "dense nuclei"]
    assert set(classes) <= set(DEMO_LIT_CLASSES)
    pred = np.asarray(classes)[(proj @ class_embeddings(classes, lit).T).argmax(1)]
    truth = np.where(np.asarray(kinds) == "glass", "background glass", "dense nuclei")
    accuracy = float((pred == truth).mean())
    assert accuracy >= 0.875, (accuracy, list(pred))  # chance is 0.5
