"""Tiny random encoders for tests, CI and the demo: real factories, milliseconds per tile.

* ``tiny_vit``: a timm ViT (patch 16, 112 px, width 64, depth 2, dynamic image size).
* ``tiny_text``: an open_clip text transformer (width 64, depth 2, context 32) with CLIP's
  bundled BPE tokenizer, so it tokenises offline.
* ``tiny_clip``: ``tiny_vit`` + ``tiny_text`` joined by projections to 64-d (the ``pair``
  family), with a learnable ``logit_scale``: a CLIP model small enough to train in CI.
"""

from __future__ import annotations

from typing import Any

from mmpath.models.base import IMAGENET_MEAN, IMAGENET_STD, DataConfig, EncoderInfo
from mmpath.models.encoders.clip_open import OpenClipTextEncoder
from mmpath.models.encoders.pair import PairEncoder
from mmpath.models.encoders.timm_tower import TimmEncoder
from mmpath.models.registry import register_encoder

TINY_DATA = DataConfig(input_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, mpp=None)
TINY_VIT = dict(
    img_size=112, patch_size=16, embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True
)
TINY_TEXT = dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2, output_dim=64)
_TEST = "random weights, for tests and CI only"

VIT_INFO = EncoderInfo(
    "tiny_vit", "image", 64, data=TINY_DATA, pooling="cls", license="n/a", source=_TEST
)
TEXT_INFO = EncoderInfo("tiny_text", "text", 64, pooling="eot", license="n/a", source=_TEST)
CLIP_INFO = EncoderInfo(
    "tiny_clip", "image-text", 64, proj_dim=64, data=TINY_DATA, license="n/a", source=_TEST
)


@register_encoder("tiny_vit", VIT_INFO)
def tiny_vit(**kwargs: Any) -> TimmEncoder:
    """A 2-block, 64-wide timm ViT (random)."""
    return TimmEncoder("vit_tiny_patch16_224", info=VIT_INFO, **{**TINY_VIT, **kwargs})


@register_encoder("tiny_text", TEXT_INFO)
def tiny_text(**kwargs: Any) -> OpenClipTextEncoder:
    """A 2-block, 64-wide open_clip text transformer (random)."""
    return OpenClipTextEncoder(info=TEXT_INFO, **{**TINY_TEXT, **kwargs})


@register_encoder("tiny_clip", CLIP_INFO)
def tiny_clip(*, proj_dim: int = 64) -> PairEncoder:
    """``tiny_vit`` + ``tiny_text`` with 64-d projections (random)."""
    return PairEncoder(tiny_vit(), tiny_text(), proj_dim=proj_dim, info=CLIP_INFO)
