"""Self-supervised pretraining: it learns view-invariant features and exports an encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpath.errors import DataError
from mmpath.train import fit, get_task
from mmpath.train.dist import DistEnv

from .train_helpers import make_config


def _ssl_overrides(train, out, **extra):
    base = {
        "out": str(out),
        "data.train": f"[{train}]",
        "data.input_size": 32,
        "data.val_fraction": 0.2,
        "model.name": "tiny_vit",
        "model.pretrained": "false",
        "model.head_hidden": 64,
        "model.head_dim": 32,
        "train.batch_size": 24,
        "train.epochs": 2,
        "train.lr": 2e-3,
        "train.warmup_steps": 2,
        "train.quiet": "true",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_ssl_learns_and_exports_an_image_encoder(caption_sets, tmp_path):
    from mmpath.models import create_encoder

    folder = caption_sets[0].parent / "img"  # a folder of unlabelled images
    cfg = make_config("ssl", _ssl_overrides(folder, tmp_path / "run"))
    assert cfg.data.augment.crop_scale == (0.3, 1.0)  # heavy views by default
    task = get_task("ssl").build(cfg, DistEnv())
    before = task.evaluate(0)
    result = fit(task, cfg)
    after = result.val[-1]["val"]
    # held-out views of unseen tiles: the objective itself drops clearly
    assert after["view_loss"] < before["view_loss"] - 0.3, (before, after)
    assert np.mean(result.losses[-3:]) < result.losses[0] - 0.2, result.losses

    enc = create_encoder(f"local-dir:{result.model_dir}")
    assert enc.info.kind == "image" and enc.info.data.input_size == 32
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        task.module.eval()
        assert torch.equal(enc.encode_image(x).features, task.encoder.encode_image(x).features)


def test_ssl_needs_images(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = make_config("ssl", _ssl_overrides(tmp_path / "empty", tmp_path / "run"))
    with pytest.raises(DataError, match="holds no image files"):
        get_task("ssl").build(cfg, DistEnv())
