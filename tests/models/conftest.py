"""Tiny random models saved in the real public formats (PLIP, QuiltNet, UNI, HF cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_CLIP_CONFIG = dict(
    projection_dim=32,
    text_config=dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
    ),
    vision_config=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
    ),
)
TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 64,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}
TINY_TIMM = {
    "architecture": "vit_tiny_patch16_224",
    "num_classes": 0,
    "global_pool": "token",
    "model_args": {
        "img_size": 64,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "init_values": 1e-5,
        "dynamic_img_size": True,
    },
    "pretrained_cfg": {
        "input_size": [3, 64, 64],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "license": "test",
    },
}


@pytest.fixture(scope="session")
def plip_format(tmp_path_factory) -> Path:
    """A tiny transformers CLIPModel written with save_pretrained (PLIP's format)."""
    import transformers

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("plip")
    cfg = transformers.CLIPConfig(**TINY_CLIP_CONFIG)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def open_clip_format(tmp_path_factory) -> Path:
    """open_clip_config.json + open_clip_pytorch_model.bin (QuiltNet's format)."""
    from mmpath.models.encoders.clip_open import build_open_clip_model

    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("quilt")
    model = build_open_clip_model(TINY_OPEN_CLIP["model_cfg"])
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="session")
def timm_format(tmp_path_factory) -> Path:
    """timm config.json + model.safetensors (UNI / Virchow hub format)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("uni")
    model = timm.create_model(
        TINY_TIMM["architecture"], pretrained=False, num_classes=0, **TINY_TIMM["model_args"]
    )
    (folder / "config.json").write_text(json.dumps(TINY_TIMM))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    return folder


def populate_hf_cache(cache: Path, repo_id: str, src: Path, revision: str = "a" * 40) -> Path:
    """Lay out ``src`` as huggingface_hub does: blobs are plain copies here (no symlinks)."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy2(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap


@pytest.fixture()
def tiny_uni_entry(timm_format):
    """A registry entry with a hub id, built by the real timm factory at tiny size."""
    import mmpath.models as M
    from mmpath.models.encoders.timm_tower import TimmEncoder
    from mmpath.models.registry import encoders, register_encoder
    from mmpath.models.weights import WeightsSpec

    info = M.EncoderInfo("test_tiny_uni", "image", 32, license="test")
    register_encoder("test_tiny_uni", info, weights=WeightsSpec(hub_id="org/tiny-uni"))(
        lambda: TimmEncoder(
            "vit_tiny_patch16_224",
            info=info,
            img_size=64,
            embed_dim=32,
            depth=2,
            num_heads=2,
            init_values=1e-5,
            dynamic_img_size=True,
        )
    )
    yield "test_tiny_uni"
    del encoders._entries["test_tiny_uni"]


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache (HF_HOME/HF_HUB_CACHE) with the hub offline."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture()
def mmpath_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "mmhome"
    monkeypatch.setenv("MMPATH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def minilm(testdata):
    """The real all-MiniLM-L6-v2 (test data), loaded once per session."""
    import mmpath.models as M

    return M.create_encoder("minilm", weights=testdata / "minilm")
