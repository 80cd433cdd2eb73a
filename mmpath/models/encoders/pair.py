"""Two towers joined by linear projections: LiT and CLIP-from-scratch models.

``PairEncoder(image, text, proj_dim=...)`` takes any image tower and any text tower of the
registry (a timm ViT, an open_clip text transformer, a transformers text model such as
MiniLM), adds bias-free linear projections into a shared ``proj_dim`` space and a learnable
``logit_scale`` (log scale, initialised at log(1/0.07) as CLIP does). ``features`` are the
image tower's own features; ``proj`` and text embeddings are the projected, normalised
vectors. Freeze a tower with ``enc.text.requires_grad_(False)`` (LiT).

A saved pair rebuilds from ``{"family": "pair", "kwargs": {"image": <tower spec>,
"text": <tower spec>, "proj_dim": n}}``; each tower spec is its own export, or, for a locked
pretrained tower, a reference ``{"ref": "minilm", "kwargs": {...}}`` to a registry entry whose
weights the normal resolver finds at load time (:meth:`PairEncoder.refer`; the model folder
then does not store that tower's weights, so a LiT model on MiniLM is a few MB, not 90).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpath.errors import ModelError, WeightsError
from mmpath.models.base import Encoder, EncoderInfo, ImageEmbedding, Tokens
from mmpath.models.encoders._common import l2n
from mmpath.models.factory import create_encoder
from mmpath.models.registry import families

__all__ = ["PairEncoder"]


class PairEncoder(Encoder):
    """An image tower and a text tower with projections into a joint space.

    Parameters
    ----------
    image
        Image tower (any :class:`Encoder` with ``info.has_image``).
    text
        Text tower (any :class:`Encoder` with ``info.has_text``).
    proj_dim
        Joint-space dimension.
    init_logit_scale
        Initial log temperature.
    info
        Frozen description; derived from the towers when omitted.

    Example
    -------
    >>> enc = PairEncoder(create_encoder("tiny_vit"), create_encoder("tiny_text"), proj_dim=32)
    >>> enc.encode_text(enc.tokenize(["tumor"])).shape
    torch.Size([1, 32])
    """

    def __init__(
        self,
        image: Encoder,
        text: Encoder,
        *,
        proj_dim: int = 256,
        init_logit_scale: float = math.log(1 / 0.07),
        info: EncoderInfo | None = None,
    ) -> None:
        super().__init__()
        if not image.info.has_image:
            raise ModelError(f"{image.info.name!r} has no image tower")
        if not text.info.has_text:
            raise ModelError(f"{text.info.name!r} has no text tower")
        self.image = image
        self.text = text
        self.image_proj = nn.Linear(image.info.embed_dim, proj_dim, bias=False)
        self.text_proj = nn.Linear(text.info.embed_dim, proj_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.proj_dim = int(proj_dim)
        self.refs: dict[str, dict[str, Any]] = {}  # tower -> {"ref": entry, "kwargs": {...}}
        base = info or EncoderInfo(
            name=f"pair({image.info.name},{text.info.name})",
            kind="image-text",
            embed_dim=image.info.embed_dim,
            source=f"image {image.info.name} + text {text.info.name}",
            slug="pair",
        )
        self.info = replace(
            base,
            kind="image-text",
            embed_dim=image.info.embed_dim,
            proj_dim=self.proj_dim,
            data=image.info.data,
            pooling=image.info.pooling,
        )

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        feats = self.image.encode_image(x).features
        return ImageEmbedding(feats, l2n(self.image_proj(feats)))

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        return self.text.tokenize(texts)

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        return self.text_proj(self.text.text_features(tokens))

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        return self.image.forward_intermediates(x, indices)

    def refer(self, tower: str, name: str | None, **kwargs: Any) -> None:
        """Save ``tower`` (``"image"`` or ``"text"``) as a reference to registry entry ``name``.

        A model folder then stores no weights for that tower; loading rebuilds it with
        ``create_encoder(name, **kwargs)`` (weights found by the normal resolver). Only right
        for a locked tower whose weights are the entry's own (LiT); ``save_encoder`` checks.
        ``name=None`` removes the reference.

        Example
        -------
        >>> lit = pair_family("tiny_vit", "minilm", proj_dim=128)  # doctest: +SKIP
        >>> lit.refer("text", "minilm")  # doctest: +SKIP
        """
        if tower not in ("image", "text"):
            raise ModelError(f"tower must be 'image' or 'text', got {tower!r}")
        if name is None:
            self.refs.pop(tower, None)
        else:
            self.refs[tower] = {"ref": str(name), "kwargs": dict(kwargs)}

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strict load; the tensors of referenced towers may be absent (they keep theirs)."""
        from mmpath.models.weights import load_strict

        skip = tuple(f"{tower}." for tower in self.refs)
        if skip:
            own = {k: v for k, v in self.state_dict().items() if k.startswith(skip)}
            state_dict = {**{k: v for k, v in state_dict.items() if not k.startswith(skip)}, **own}
        load_strict(self, state_dict, name=self.info.name)

    def export(self, root: Path, sub: str) -> dict[str, Any]:
        specs = {}
        for tower in ("image", "text"):
            if tower in self.refs:
                specs[tower] = dict(self.refs[tower])
            else:
                specs[tower] = getattr(self, tower).export(root, f"{sub}/{tower}" if sub else tower)
        return {"family": "pair", "kwargs": {**specs, "proj_dim": self.proj_dim}}


def _referenced(spec: dict[str, Any]) -> Encoder:
    name = spec["ref"]
    meta = torch.get_default_device().type == "meta"
    try:
        return create_encoder(name, device="meta" if meta else None, **spec.get("kwargs", {}))
    except WeightsError as err:
        raise WeightsError(f"referenced tower {name!r} cannot be loaded: {err}") from None
    except (ModelError, KeyError) as err:
        raise WeightsError(
            f"referenced tower {name!r} is not a registered encoder ({err}); install the "
            "mmpath version or plugin that registers it"
        ) from None


def _tower(spec: str | dict[str, Any] | Encoder, kwargs: dict[str, Any] | None) -> Encoder:
    if isinstance(spec, Encoder):
        return spec
    if isinstance(spec, dict) and "ref" in spec:
        return _referenced(spec)
    if isinstance(spec, dict):
        return families.create(spec["family"], **spec.get("kwargs", {}))
    return create_encoder(spec, **(kwargs or {}))


@families.register("pair")
def pair_family(
    image: str | dict[str, Any] | Encoder,
    text: str | dict[str, Any] | Encoder,
    *,
    proj_dim: int = 256,
    image_kwargs: dict[str, Any] | None = None,
    text_kwargs: dict[str, Any] | None = None,
    init_logit_scale: float = math.log(1 / 0.07),
) -> PairEncoder:
    """A pair from two towers: registry names (weights resolved), saved specs, or encoders.

    Example
    -------
    >>> lit = pair_family("tiny_vit", "minilm", proj_dim=128)  # doctest: +SKIP
    """
    pair = PairEncoder(
        _tower(image, image_kwargs),
        _tower(text, text_kwargs),
        proj_dim=proj_dim,
        init_logit_scale=init_logit_scale,
    )
    for tower, spec in (("image", image), ("text", text)):
        if isinstance(spec, dict) and "ref" in spec:
            pair.refer(tower, spec["ref"], **spec.get("kwargs", {}))
    return pair
