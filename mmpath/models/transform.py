"""The one uint8 tile -> normalised tensor transform of every model input.

Every model in mmpath reads RGB tiles the same way: ``uint8 (H, W, 3)`` (or a batch
``(B, H, W, 3)``), channels moved first, scaled to ``[0, 1]`` (torchvision's
``to_dtype(..., scale=True)``) and normalised with the model's ``mean``/``std``
(``torchvision.transforms.v2.functional.normalize``). The pieces:

* :func:`to_chw`: pixels (numpy or torch, one tile or a batch) -> a ``uint8`` channels-first
  tensor, on ``device``;
* :func:`normalize`: a ``[0, 1]`` float tensor -> ``(x - mean) / std`` (``mean=None`` keeps
  ``[0, 1]``: the VAE's input);
* :func:`to_tensor`: both, with the ``uint8 -> [0, 1]`` scaling between them.

Inference builds it from the encoder's data config: :class:`mmpath.tl._embed_data.Preprocess`
(resampling to the encoder's mpp and input size, centre crop, stain normalisation, then
:func:`to_tensor`'s scaling and normalisation), and the heads' predictors (``tl.segment``,
``tl.anomaly``, PatchCore) call :func:`to_tensor` with the mean/std stored with the model.
Training adds augmentation on the uint8 pixels first (:mod:`mmpath.train.augment`) and then
calls :func:`to_tensor` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["to_chw", "scale", "normalize", "to_tensor"]


def to_chw(pixels: Any, *, device: Any = None) -> torch.Tensor:
    """``uint8`` ``(..., H, W, 3)`` numpy or torch pixels -> ``uint8`` ``(..., 3, H, W)`` tensor."""
    if isinstance(pixels, torch.Tensor):
        x = pixels
    else:
        # a copy only when needed (negative strides of flips/rotations, read-only buffers)
        x = torch.from_numpy(np.require(pixels, dtype=np.uint8, requirements=["C", "W"]))
    if device is not None:
        x = x.to(device)
    return x.movedim(-1, -3)


def scale(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` -> ``float32`` in ``[0, 1]`` (torchvision's ``to_dtype(scale=True)``)."""
    from torchvision.transforms.v2 import functional as F

    return F.to_dtype(x, torch.float32, scale=True)


def normalize(
    x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a ``(..., 3, H, W)`` float tensor (``None``: ``x``)."""
    if mean is None:
        return x
    from torchvision.transforms.v2 import functional as F

    return F.normalize(x, [float(m) for m in mean], [float(s) for s in std])


def to_tensor(
    pixels: Any,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    device: Any = None,
) -> torch.Tensor:
    """uint8 RGB pixels ``(H, W, 3)`` or ``(B, H, W, 3)`` -> normalised float32
    ``(3, H, W)`` or ``(B, 3, H, W)`` (``mean=None``: scaled to ``[0, 1]`` only).

    Example
    -------
    >>> x = to_tensor(tiles, data.mean, data.std, device="cuda")  # doctest: +SKIP
    """
    return normalize(scale(to_chw(pixels, device=device)), mean, std)
