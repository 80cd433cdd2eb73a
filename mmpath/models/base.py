"""The encoder contract every registry entry satisfies.

``tl`` code talks to encoders only through this contract, so it never special-cases a
model name:

* ``encode_image(x) -> ImageEmbedding(features, proj)``: ``x`` is a float tensor
  ``(B, 3, H, W)`` already normalised with ``info.data.mean/std`` at ``info.data.input_size``.
  ``features`` ``(B, info.embed_dim)`` are what the model card recommends for probes and
  regression (stored as ``obsm["X_<slug>"]``); ``proj`` ``(B, info.proj_dim)`` is the
  L2-normalised joint image-text space (``obsm["X_<slug>_proj"]``), ``None`` for image-only
  models.
* ``tokenize(texts) -> Tokens`` and ``encode_text(tokens) -> Tensor (B, proj_dim)``,
  L2-normalised, for text and image-text models (a text-only tower returns its pooled
  sentence embedding, normalised, and ``proj_dim == embed_dim``).
* ``forward_intermediates(x, indices) -> list[Tensor (B, C, H', W')]``: feature maps of the
  image tower for dense heads (U-Net), for every image tower.
* ``info``: an :class:`EncoderInfo` (frozen) with the dims, data config, licence and source.

Beyond that contract, every encoder can describe how to rebuild itself (``export``), which is
what :func:`mmpath.models.save_encoder` writes next to the weights: a family name from
``mmpath.models.registry.families`` plus plain keyword arguments. Image-text encoders expose
``logit_scale`` (a log-scale ``nn.Parameter``) for contrastive training, and text towers
``text_features(tokens)``: the pooled, *unnormalised* sentence embedding that a projection
head (see the ``pair`` family) reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from mmpath.errors import ModelError

__all__ = ["DataConfig", "EncoderInfo", "ImageEmbedding", "Tokens", "Encoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DataConfig:
    """How an image tower wants its input."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    mpp: float | None = 0.5  # µm/px the model was trained at; None = unknown/any


@dataclass(frozen=True)
class EncoderInfo:
    """Frozen description of a registry entry (no construction needed to list it)."""

    name: str
    kind: str  # "image", "text" or "image-text"
    embed_dim: int  # dim of `features` (image) or of text embeddings (text-only)
    proj_dim: int | None = None  # joint-space dim for image-text models
    data: DataConfig = field(default_factory=DataConfig)
    pooling: str = "cls"
    license: str = "unknown"
    source: str = ""
    slug: str = ""  # obsm key fragment: X_<slug>
    weights: str = ""  # how weights are obtained (hub id, file name...)
    verified: bool = False  # ever run on its real weights?

    @property
    def has_image(self) -> bool:
        return self.kind in ("image", "image-text")

    @property
    def has_text(self) -> bool:
        return self.kind in ("text", "image-text")


class ImageEmbedding(NamedTuple):
    features: torch.Tensor  # (B, embed_dim): for probes, regression, kNN
    proj: torch.Tensor | None  # (B, proj_dim), L2-normalised joint space; None if image-only


class Tokens(NamedTuple):
    """Tokenised text: ``input_ids`` and (for HF towers) ``attention_mask``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None

    def to(self, device: Any) -> Tokens:
        return Tokens(
            self.input_ids.to(device),
            None if self.attention_mask is None else self.attention_mask.to(device),
        )


class Encoder(nn.Module):
    """Base class of every encoder; subclasses implement what their kind supports."""

    info: EncoderInfo

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        raise ModelError(f"encoder {self.info.name!r} has no image tower")

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        raise ModelError(
            f"encoder {self.info.name!r} has no text tower; use an image-text model "
            "(e.g. plip, conch) or a text model for prompts"
        )

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        raise ModelError(f"encoder {self.info.name!r} has no text tower")

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        raise ModelError(f"encoder {self.info.name!r} has no image tower")

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        """Pooled text embedding before normalisation (what a projection head reads)."""
        raise ModelError(f"encoder {self.info.name!r} has no text tower")

    def learned_logit_scale(self) -> float | None:
        """The model's own zero-shot logit scale (``exp`` of its learnt log-scale), or None.

        Image-text encoders keep it as ``logit_scale``: a one-element log-scale tensor on the
        module or on one of its direct children (a positive plain number there is the scale
        itself). :func:`mmpath.tl.zero_shot` multiplies cosines by it (capped at 100) and
        falls back to 100 when this is None. Encoders with another convention override this.
        """
        for mod in (self, *self.children()):
            value = getattr(mod, "logit_scale", None)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                return math.exp(float(value.detach()))
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value)
        return None

    def export(self, root: Path, sub: str) -> dict[str, Any]:
        """How to rebuild this module: ``{"family": name, "kwargs": {...}}``.

        Families that need files to rebuild (a transformers config, a tokenizer) write them
        under ``root / sub`` and refer to them as ``"./<sub>/..."`` in the kwargs.
        """
        spec = getattr(self, "_spec", None)
        if spec is None:
            raise ModelError(f"encoder {self.info.name!r} cannot describe how to rebuild itself")
        return {"family": spec[0], "kwargs": dict(spec[1])}

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint in its public format (strict; mismatches raise WeightsError)."""
        from mmpath.models.weights import load_strict

        load_strict(self, state_dict, name=self.info.name)

    def forward(self, x: torch.Tensor) -> ImageEmbedding:
        return self.encode_image(x)
