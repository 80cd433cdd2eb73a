"""Segmentation loss: soft Dice + cross-entropy.

``DiceCELoss`` is ``ce_weight * CE + dice_weight * (1 - mean soft Dice)``, the loss nnU-Net and
MONAI's ``DiceCELoss`` use. ``class_weight`` weights the cross-entropy per class (torch's
``weight=``; for one binary logit, the weight of class 1 relative to class 0), which is how a
rare foreground class such as nuclei (~6% of pixels on real stroma) keeps its gradient:
:func:`class_weights_from_masks` derives it from label frequencies. Soft Dice per class ``c``
over the whole batch is

    (2 * sum(p_c * g_c) + eps) / (sum(p_c) + sum(g_c) + eps)

with ``p`` the softmax (or, for one binary logit, ``[1 - sigmoid, sigmoid]``) and ``g`` the
one-hot target. The ``eps`` in both numerator and denominator makes a class absent from both
prediction and target score 1, which is the empty-mask convention of the metrics
(:mod:`mmpath.metrics`); on hard one-hot predictions ``1 - loss_dice`` equals sklearn's
macro ``f1_score(..., zero_division=1)`` (tested). Cross-entropy is torch's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss", "SegLoss", "soft_dice", "class_weights_from_masks"]


class SegLoss(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    dice: torch.Tensor  # 1 - mean soft Dice


def soft_dice(probs: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Per-class soft Dice ``(C,)`` of probabilities ``(B, C, H, W)`` vs labels ``(B, H, W)``.

    Example
    -------
    >>> soft_dice(torch.softmax(logits, 1), labels).mean()
    """
    return _masked_soft_dice(probs, target.long(), eps=eps)


class DiceCELoss(nn.Module):
    """Dice + cross-entropy for logits ``(B, C, H, W)`` (or ``(B, 1, H, W)`` binary).

    Parameters
    ----------
    dice_weight, ce_weight
        Weights of the two terms.
    ignore_index
        Label value excluded from both terms (e.g. 255 for unannotated pixels), or ``None``.
    class_weight
        Per-class cross-entropy weights ``(C,)`` (``None``: all 1). The weighted CE is
        normalised by the summed weights of the pixels, as torch's ``reduction="mean"`` does.

    Example
    -------
    >>> loss = DiceCELoss()(model(x), masks).total
    """

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int | None = None,
        class_weight=None,
    ) -> None:
        super().__init__()
        cw = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", cw, persistent=False)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> SegLoss:
        target = target.long()
        valid = None
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = torch.where(valid, target, torch.zeros_like(target))
        if logits.shape[1] == 1:
            x = logits[:, 0]
            ce_map = F.binary_cross_entropy_with_logits(x, target.to(x.dtype), reduction="none")
            p = torch.sigmoid(x)[:, None]
            probs = torch.cat([1 - p, p], 1)
        else:
            ce_map = F.cross_entropy(logits, target, reduction="none")
            probs = torch.softmax(logits, 1)
        w = torch.ones_like(ce_map) if valid is None else valid.to(ce_map.dtype)
        if self.class_weight is not None:
            cw = self.class_weight.to(ce_map)
            if len(cw) != max(2, logits.shape[1]):
                raise ValueError(f"class_weight has {len(cw)} entries for {logits.shape[1]} logits")
            pix_w = cw[target] * w
            ce = (ce_map * pix_w).sum() / pix_w.sum().clamp_min(1e-12)
        else:
            ce = (ce_map * w).sum() / w.sum().clamp_min(1)
        if valid is not None:
            probs = probs * w[:, None]
            onehot_mask = valid
        else:
            onehot_mask = None
        dice_t = target if onehot_mask is None else torch.where(onehot_mask, target, -1)
        dice = 1 - _masked_soft_dice(probs, dice_t).mean()
        return SegLoss(self.ce_weight * ce + self.dice_weight * dice, ce, dice)


def class_weights_from_masks(masks, num_classes: int, *, ignore_index: int | None = None):
    """Cross-entropy class weights from label frequencies: ``1 / sqrt(freq)``, mean 1 per pixel.

    The square root (rather than plain inverse frequency) up-weights a rare class without
    letting a handful of its pixels dominate the gradient; the weights are scaled so that
    ``sum_c freq_c * w_c = 1`` (the loss keeps its scale). Classes absent from the masks get
    the largest weight seen.

    Example
    -------
    >>> class_weights_from_masks(train_masks, 2)  # ~[0.8, 4.0] for 6% nuclei
    """
    import numpy as np

    counts = np.zeros(num_classes, np.float64)
    for m in masks:
        m = np.asarray(m).ravel()
        if ignore_index is not None:
            m = m[m != ignore_index]
        counts += np.bincount(m.astype(np.int64), minlength=num_classes)[:num_classes]
    if counts.sum() == 0:
        return np.ones(num_classes, np.float32)
    freq = counts / counts.sum()
    w = np.zeros(num_classes)
    seen = freq > 0
    w[seen] = 1 / np.sqrt(freq[seen])
    w[~seen] = w[seen].max()
    w /= (freq * w).sum()
    return w.astype(np.float32)


def _masked_soft_dice(
    probs: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    # target == -1 marks ignored pixels: their one-hot row is all zero (probs already zeroed).
    C = probs.shape[1]
    onehot = F.one_hot(target.clamp_min(0), C).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot * (target >= 0)[:, None].to(probs.dtype)
    dims = (0, 2, 3)
    return (2 * (probs * onehot).sum(dims) + eps) / (probs.sum(dims) + onehot.sum(dims) + eps)
