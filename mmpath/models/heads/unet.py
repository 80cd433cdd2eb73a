"""A U-Net decoder on the shared backbone (UNETR-style for ViTs).

The head reads multi-scale feature maps from ``encoder.forward_intermediates(x, indices)``
(the contract in :mod:`mmpath.models.base`) and decodes them to per-pixel class logits.

Design (after UNETR, Hatamizadeh et al. 2022, and timm's ``forward_intermediates``):

* The deepest map is the bottleneck at the coarsest stride ``s``; the decoder climbs
  ``s, s/2, ..., 2, 1`` by 2x transposed convolutions.
* Shallower maps are skip connections, assigned from deep to shallow to the successively finer
  levels. A ViT gives every map at the patch stride, so each skip is first brought to its
  level by a chain of 2x transposed convolutions (UNETR's "projection"); a CNN pyramid already
  has the right strides and gets a 1x1 convolution.
* The full-resolution level takes a small convolutional stem on the input image, which is what
  recovers boundaries finer than a patch (and local texture).
* Strides and channels are found with one dry run of the encoder at build time, so any encoder
  honouring the contract works without special cases.

Normalisation is BatchNorm: in eval mode it is a per-pixel affine map, so the decoder adds a
bounded receptive field and whole-slide tiling stays exact for convolutional encoders.

``finetune`` chooses what trains: ``"frozen"`` (the encoder runs in eval mode without
gradients), ``"partial"`` (the last ``unfreeze_last`` transformer blocks train), ``"full"``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mmpath.errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["UNetConfig", "UNetHead", "FINETUNE_MODES"]

FINETUNE_MODES = ("frozen", "partial", "full")


@dataclass(frozen=True)
class UNetConfig:
    """What a U-Net head was built with (saved in its model folder)."""

    num_classes: int = 2  # 1 = binary with one sigmoid logit; >= 2 = softmax classes
    indices: int | tuple[int, ...] = 4  # forward_intermediates indices (int n = last n blocks)
    decoder_channels: int = 16  # channels at full resolution; doubles per level, capped at 256
    stem_channels: int = 16
    finetune: str = "frozen"
    unfreeze_last: int = 1  # blocks trained when finetune="partial"

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _log2_ratio(a: int, b: int) -> int | None:
    if a % b:
        return None
    k = math.log2(a // b)
    return int(k) if k == int(k) else None


class _Adapter(nn.Module):
    """Brings a feature map of stride ``src`` to stride ``dst`` with ``cout`` channels."""

    def __init__(self, cin: int, cout: int, src: int, dst: int) -> None:
        super().__init__()
        self.dst = dst
        k_up = _log2_ratio(src, dst) if src >= dst else None
        layers: list[nn.Module] = []
        if k_up is not None and k_up > 0:
            layers.append(_up(cin, cout))
            layers += [_up(cout, cout) for _ in range(k_up - 1)]
            self.resize = False
        else:
            layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
            self.resize = k_up is None  # not a power-of-2 upsampling: interpolate first
        self.body = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.resize and tuple(f.shape[-2:]) != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        out = self.body(f)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


def _find_blocks(encoder: nn.Module) -> nn.ModuleList | None:
    """The first ``blocks`` ModuleList (timm ViTs and most transformers name it so)."""
    for name, mod in encoder.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and name.split(".")[-1] in (
            "blocks",
            "layers",
            "layer",
            "stages",
        ):
            return mod
    return None


def _dry_run(
    encoder: nn.Module, cfg: UNetConfig, size: int
) -> tuple[list[torch.Tensor], UNetConfig]:
    """Feature maps of a zero image; an int ``indices`` larger than the depth is reduced."""
    was_training = encoder.training
    encoder.eval()
    x = torch.zeros(1, 3, size, size)
    n = cfg.indices
    try:
        with torch.no_grad():
            while True:
                try:
                    return encoder.forward_intermediates(x, n), replace(cfg, indices=n)
                except (AssertionError, IndexError, ValueError, RuntimeError):
                    if not isinstance(n, int) or n <= 1:
                        raise
                    n -= 1  # a shallower encoder than the default asks for: use every block
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"the encoder's forward_intermediates failed on a {size}px input "
            f"(indices={cfg.indices!r}): {err}"
        ) from None
    finally:
        encoder.train(was_training)


class UNetHead(nn.Module):
    """U-Net decoder over a backbone's ``forward_intermediates``.

    Parameters
    ----------
    encoder
        An :class:`~mmpath.models.base.Encoder` with an image tower.
    config
        A :class:`UNetConfig`; keyword arguments override its fields.
    input_size
        Size of the dry run that discovers strides (defaults to the encoder's input size).

    Example
    -------
    >>> enc = mm.models.create_encoder("tiny_vit")
    >>> head = UNetHead(enc, num_classes=3, finetune="frozen")
    >>> head(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        encoder: nn.Module,
        config: UNetConfig | None = None,
        *,
        input_size: int | None = None,
        **overrides,
    ) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        if overrides:
            cfg = UNetConfig(**{**asdict(cfg), **overrides})
        if isinstance(cfg.indices, list):
            cfg = UNetConfig(**{**asdict(cfg), "indices": tuple(cfg.indices)})
        self.config = cfg
        self.encoder = encoder
        info = getattr(encoder, "info", None)
        size = int(input_size or (info.data.input_size if info is not None else 224))
        feats, cfg = _dry_run(encoder, cfg, size)
        self.config = cfg
        if not feats:
            raise ModelError("the encoder returned no intermediate feature maps")
        strides = []
        for f in feats:
            if f.ndim != 4:
                raise ModelError(
                    f"forward_intermediates must return (B, C, H, W) maps, got {tuple(f.shape)}"
                )
            strides.append(size // f.shape[-1])
        s_max = max(strides)
        n_levels = int(math.log2(s_max)) + 1 if s_max > 1 else 1
        if 2 ** (n_levels - 1) != s_max:
            raise ModelError(f"the encoder's coarsest stride {s_max} is not a power of 2")
        self.stride = s_max
        level_strides = [s_max // 2**j for j in range(n_levels)]  # coarse -> fine
        chans = [min(256, cfg.decoder_channels * s) for s in level_strides]
        self._n_skips = min(len(feats) - 1, max(n_levels - 2, 0))
        if len(feats) - 1 > self._n_skips:
            log.info(
                "U-Net: %d feature maps but %d skip levels; the shallowest %d are unused",
                len(feats),
                self._n_skips,
                len(feats) - 1 - self._n_skips,
            )
        self.bottleneck = _Adapter(feats[-1].shape[1], chans[0], strides[-1], s_max)
        self.skips = nn.ModuleList()
        for j in range(1, 1 + self._n_skips):
            f = feats[-1 - j]
            self.skips.append(_Adapter(f.shape[1], chans[j], strides[-1 - j], level_strides[j]))
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for j in range(1, n_levels):
            self.ups.append(_up(chans[j - 1], chans[j]))
            has_skip = j <= self._n_skips
            is_last = j == n_levels - 1
            cin = chans[j] * (2 if has_skip else 1) + (cfg.stem_channels if is_last else 0)
            self.blocks.append(_conv_block(cin, chans[j]))
        self.stem = _conv_block(3, cfg.stem_channels)
        self._stem_only = n_levels == 1
        head_in = chans[-1] + (cfg.stem_channels if self._stem_only else 0)
        self.classifier = nn.Conv2d(head_in, cfg.num_classes, 1)
        self.set_finetune(cfg.finetune, unfreeze_last=cfg.unfreeze_last)

    # -- training mode ----------------------------------------------------------------------
    def set_finetune(self, mode: str, *, unfreeze_last: int = 1) -> None:
        """Choose what trains: ``"frozen"``, ``"partial"`` (last blocks) or ``"full"``."""
        if mode not in FINETUNE_MODES:
            raise ModelError(f"finetune must be one of {FINETUNE_MODES}, got {mode!r}")
        self.finetune = mode
        for p in self.encoder.parameters():
            p.requires_grad_(mode == "full")
        if mode == "partial":
            blocks = _find_blocks(self.encoder)
            if blocks is not None and len(blocks):
                for blk in list(blocks)[-max(1, unfreeze_last) :]:
                    for p in blk.parameters():
                        p.requires_grad_(True)
            else:  # no block list: train the last parameter tensors instead
                params = list(self.encoder.parameters())
                for p in params[-max(1, len(params) // 4) :]:
                    p.requires_grad_(True)
        if mode == "frozen":
            self.encoder.eval()

    def train(self, mode: bool = True) -> UNetHead:
        super().train(mode)
        if self.finetune == "frozen":
            self.encoder.eval()  # dropout/BN statistics of a frozen encoder never change
        return self

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def n_prob_classes(self) -> int:
        """Classes in :meth:`predict_proba` output (2 for a binary head)."""
        return max(2, self.config.num_classes)

    # -- forward ----------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.finetune == "frozen":
            with torch.no_grad():
                return self.encoder.forward_intermediates(x, self.config.indices)
        return self.encoder.forward_intermediates(x, self.config.indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for normalised images ``(B, 3, H, W)``."""
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ModelError(
                f"U-Net input {H}x{W} must be a multiple of the encoder stride {self.stride}; "
                "choose a tile size that is"
            )
        stem = self.stem(x)
        feats = self._features(x)
        h = self.bottleneck(feats[-1], (H // self.stride, W // self.stride))
        if self._stem_only:
            return self.classifier(torch.cat([h, stem], 1))
        n = len(self.blocks)
        for j in range(1, n + 1):
            h = self.ups[j - 1](h)
            parts = [h]
            if j <= self._n_skips:
                parts.append(self.skips[j - 1](feats[-1 - j], tuple(h.shape[-2:])))
            if j == n:
                parts.append(stem)
            h = self.blocks[j - 1](torch.cat(parts, 1))
        return self.classifier(h)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, max(2, num_classes), H, W)`` (binary: [1 - p, p])."""
        logits = self(x)
        if self.config.num_classes == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], 1)
        return torch.softmax(logits, 1)
