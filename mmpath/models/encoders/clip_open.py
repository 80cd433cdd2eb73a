"""open_clip models (QuiltNet, ``open_clip:<arch>``) and open_clip text towers (``tiny_text``).

An open_clip model is built from a built-in architecture name or from the ``model_cfg``
dict that open_clip's hub folders carry (``open_clip_config.json``), with the same class
choice open_clip's ``create_model`` makes (CLIP, CustomTextCLIP, CoCa). Checkpoints in
open_clip's format (``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``) load
unchanged. Tokenisation uses CLIP's BPE vocabulary bundled with open_clip, so it is offline.

``features`` is the image embedding before normalisation (what CLIP's linear probes use);
``proj`` is the same vector L2-normalised.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
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
from mmpath.models.encoders._common import clip_bpe_tokenize, l2n
from mmpath.models.registry import families

__all__ = ["OpenClipEncoder", "OpenClipTextEncoder", "build_open_clip_model"]


def build_open_clip_model(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate an open_clip model from its config dict (random init, no download)."""
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    vision_cfg = cfg.get("vision_cfg", {})
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    custom = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if "multimodal_cfg" in cfg:
        cls = open_clip.CoCa
    elif custom:
        cls = open_clip.CustomTextCLIP
    else:
        cls = open_clip.CLIP
    return cls(**cfg)


class OpenClipEncoder(Encoder):
    """An open_clip image-text model.

    Parameters
    ----------
    arch
        A built-in open_clip architecture (``"ViT-B-32"``), or
    model_cfg
        the ``model_cfg`` dict of an ``open_clip_config.json``.
    preprocess_cfg
        ``mean``/``std``/``interpolation`` overrides (``preprocess_cfg`` of the same file).
    info
        Frozen description; derived when omitted.

    Example
    -------
    >>> enc = OpenClipEncoder("ViT-B-32")  # doctest: +SKIP
    """

    def __init__(
        self,
        arch: str | None = None,
        *,
        model_cfg: dict[str, Any] | None = None,
        preprocess_cfg: dict[str, Any] | None = None,
        info: EncoderInfo | None = None,
    ) -> None:
        super().__init__()
        if (arch is None) == (model_cfg is None):
            raise ValueError("give exactly one of arch= or model_cfg=")
        if arch is not None:
            model_cfg = open_clip.get_model_config(arch)
            if model_cfg is None:
                from mmpath.errors import ModelError

                raise ModelError(
                    f"unknown open_clip architecture {arch!r}; see open_clip.list_models()"
                )
        assert model_cfg is not None
        self.model = build_open_clip_model(model_cfg)
        self.context_length = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
        self._hf_tokenizer = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
        pre = preprocess_cfg or {}
        size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        dim = int(model_cfg["embed_dim"])
        data = DataConfig(
            input_size=size,
            mean=tuple(pre.get("mean", CLIP_MEAN)),
            std=tuple(pre.get("std", CLIP_STD)),
            interpolation=str(pre.get("interpolation", "bicubic")),
            mpp=None,
        )
        label = arch or "custom"
        self.info = info or EncoderInfo(
            name=f"open_clip:{label}",
            kind="image-text",
            embed_dim=dim,
            proj_dim=dim,
            data=data,
            pooling="clip",
            source=f"open_clip {label}",
            slug=f"open_clip_{label}",
        )
        self._spec = (
            "open_clip",
            {"model_cfg": copy.deepcopy(dict(model_cfg)), "preprocess_cfg": dict(pre)}
            if arch is None
            else {"arch": arch, "preprocess_cfg": dict(pre)},
        )

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        feats = self.model.encode_image(x, normalize=False)
        if isinstance(feats, tuple):  # CoCa returns (pooled, tokens) in some versions
            feats = feats[0]
        return ImageEmbedding(feats, l2n(feats))

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self._hf_tokenizer:
            tok = open_clip.tokenizer.HFTokenizer(
                self._hf_tokenizer, context_length=self.context_length
            )
            ids = tok(list(texts))
            return Tokens(ids, (ids != 0).long())
        return clip_bpe_tokenize(texts, self.context_length)

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        out = self.model.encode_text(tokens.input_ids, normalize=False)
        return out[0] if isinstance(out, tuple) else out

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        idx = indices if isinstance(indices, int) else list(indices)
        out = self.model.visual.forward_intermediates(x, indices=idx, intermediates_only=True)
        return list(out["image_intermediates"])

    def load_pretrained(self, location: Path, *, sha256: str | None = None) -> None:
        """Weights from a file or an open_clip folder (its ``open_clip_config.json`` wins)."""
        from mmpath.models.weights import read_state_dict

        config = Path(location) / "open_clip_config.json"
        if config.is_file():
            cfg = json.loads(config.read_text(encoding="utf-8"))
            model_cfg = cfg.get("model_cfg", cfg)
            self.model = build_open_clip_model(model_cfg)
            self._spec = ("open_clip", {"model_cfg": model_cfg, **self._spec[1]})
            self._spec[1].pop("arch", None)
            if int(model_cfg.get("embed_dim", -1)) != self.info.embed_dim:
                from mmpath.errors import WeightsError

                raise WeightsError(
                    f"{location} holds an open_clip model with embed_dim "
                    f"{model_cfg.get('embed_dim')}, not the {self.info.embed_dim} of "
                    f"{self.info.name!r}: are these the weights of a different model?"
                )
        self.load_checkpoint(read_state_dict(location, sha256=sha256))

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        from mmpath.models.weights import load_strict

        if isinstance(self.model, open_clip.CustomTextCLIP) and "positional_embedding" in (
            state_dict
        ):
            state_dict = open_clip.factory.convert_to_custom_text_state_dict(state_dict)
        load_strict(self.model, state_dict, name=self.info.name)


class OpenClipTextEncoder(Encoder):
    """An open_clip text transformer alone (CLIP BPE tokenizer), e.g. ``tiny_text``.

    Example
    -------
    >>> enc = OpenClipTextEncoder(width=32, heads=2, layers=1, output_dim=32)
    >>> enc.encode_text(enc.tokenize(["tumor"])).shape
    torch.Size([1, 32])
    """

    def __init__(self, *, info: EncoderInfo | None = None, **text_cfg: Any) -> None:
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.model = TextTransformer(**text_cfg)
        self.context_length = int(text_cfg.get("context_length", 77))
        dim = int(text_cfg.get("output_dim") or text_cfg.get("width", 512))
        self.info = info or EncoderInfo(
            name="open_clip_text", kind="text", embed_dim=dim, pooling="eot", slug="text"
        )
        self._spec = ("open_clip_text", dict(text_cfg))

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        return clip_bpe_tokenize(texts, self.context_length)

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        out = self.model(tokens.input_ids)
        return out[0] if isinstance(out, tuple) else out

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))


@families.register("open_clip")
def open_clip_family(
    arch: str | None = None,
    *,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
) -> OpenClipEncoder:
    """Any open_clip architecture or config dict (random init)."""
    return OpenClipEncoder(arch, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)


@families.register("open_clip_text")
def open_clip_text_family(**text_cfg: Any) -> OpenClipTextEncoder:
    """An open_clip text tower from its ``text_cfg`` keywords (random init)."""
    return OpenClipTextEncoder(**text_cfg)
