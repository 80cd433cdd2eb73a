"""Seg training that survives real data: class-weighted loss, best-checkpoint export, collapse.

The real-data margin (U-Net vs the stain-aware baseline on the held-out half of the
histolytics stroma) is tests/tl/test_seg_real.py (slow) and its fast counterpart there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmpath.models.heads import DiceCELoss, class_weights_from_masks
from mmpath.train._selection import BestCheckpoint, collapse_warning

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_class_weights_upweight_the_rare_class_and_keep_the_scale():
    masks = [np.zeros((10, 10), np.uint8) for _ in range(3)]
    masks[0][:2, :3] = 1  # 6 of 300 pixels: 2%
    w = class_weights_from_masks(masks, 3)
    freq = np.array([294, 6, 0]) / 300
    expect = 1 / np.sqrt(freq[:2])
    assert w[1] / w[0] == pytest.approx(expect[1] / expect[0], rel=1e-5)
    assert (freq * w).sum() == pytest.approx(1.0, rel=1e-5)  # the pixel-mean weight is 1
    assert w[2] == pytest.approx(w[1])  # an absent class gets the largest weight
    ignored = [np.where(m == 0, 255, m) for m in masks]
    assert np.allclose(class_weights_from_masks(ignored, 2, ignore_index=255), [1.0, 1.0])


@pytest.mark.parametrize("binary", [False, True])
def test_weighted_ce_equals_torch_reference(binary):
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 8, 8, generator=g) < 0.2).long()
    w = torch.tensor([0.7, 3.0])
    if binary:
        logits = torch.randn(2, 1, 8, 8, generator=g)
        per_pix = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="none")
        ref = (per_pix * w[target]).sum() / w[target].sum()
    else:
        logits = torch.randn(2, 2, 8, 8, generator=g)
        ref = F.cross_entropy(logits, target, weight=w)
    out = DiceCELoss(class_weight=w, dice_weight=0.0)(logits, target)
    assert torch.allclose(out.ce, ref, atol=1e-6)
    # unweighted stays torch's plain mean, and weights change it
    plain = DiceCELoss()(logits, target)
    assert not torch.allclose(plain.ce, out.ce)
    with pytest.raises(ValueError, match="class_weight has 3"):
        DiceCELoss(class_weight=[1.0, 1.0, 1.0])(torch.randn(1, 2, 4, 4), target[:1, :4, :4])


def test_collapse_warning_on_constant_predictions():
    targets = np.zeros((2, 8, 8), np.int64)
    targets[:, :2] = 1
    const = np.zeros((2, 2, 8, 8), np.float32)
    const[:, 0], const[:, 1] = 0.551, 0.449  # the real collapse: P(nucleus) = 0.449 everywhere
    assert "constant" in collapse_warning(const, targets)
    one_class = np.random.default_rng(0).uniform(0.6, 0.9, (2, 1, 8, 8)).astype(np.float32)
    assert "every validation pixel" in collapse_warning(
        np.concatenate([one_class, 1 - one_class], 1), targets
    )
    good = np.stack([1 - targets, targets], 1).astype(np.float32)
    assert collapse_warning(good, targets) is None
    assert collapse_warning(const, np.zeros((2, 8, 8), np.int64)) is None  # one-class targets


def test_best_checkpoint_restores_the_best_not_the_last(tmp_path):
    net = nn.Linear(3, 1)
    best = BestCheckpoint(tmp_path, "dice")
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert best.update(net, 0.5, epoch=0)
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert best.update(net, 0.7, epoch=1)
    with torch.no_grad():
        net.weight.fill_(3.0)
    assert not best.update(net, 0.2, epoch=2)
    assert not best.update(net, float("nan"), epoch=3)
    assert best.restore(net) and torch.all(net.weight == 2.0) and best.epoch == 1
    # a fresh run (no last.pt) ignores a stale best.pt; a resumable one picks it up
    assert BestCheckpoint(tmp_path, "dice").epoch is None
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    again = BestCheckpoint(tmp_path, "dice")
    assert again.epoch == 1 and again.value == pytest.approx(0.7)
    assert not BestCheckpoint(tmp_path / "other", "dice").restore(net)


def test_seg_run_exports_the_best_epoch(tmp_path, caplog):
    """A run whose lr blows it up after a good epoch still exports the good epoch."""
    from safetensors.torch import load_file

    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    spec = get_task("seg")
    cfg = load_config(
        spec.config,
        CONFIGS / "seg-tiny.yaml",
        [f"out={tmp_path / 'run'}", "train.epochs=4", "train.quiet=true", "data.synthetic_n=48"],
    )
    with caplog.at_level(logging.DEBUG):
        result = fit(spec.build, cfg)
    dice = [v["val"]["dice"] for v in result.val]
    best_epoch = int(np.argmax(dice))
    assert result.val[-1]["val"]["best_dice"] == pytest.approx(max(dice))
    assert f"best validation checkpoint: epoch {best_epoch}" in caplog.text
    assert "CE class weights from the training masks" in caplog.text
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    exported = load_file(result.model_dir / "model.safetensors")
    for k, v in best["model"].items():
        assert torch.equal(exported[k], v), k
