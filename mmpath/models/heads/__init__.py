"""Every trained head: U-Net segmentation, VAE anomaly, expression and slide-level MIL.

All are registered in :data:`mmpath.models.registry.heads` (one module each here):

* ``heads.create("unet", encoder="tiny_vit", num_classes=2, finetune="frozen")``
* ``heads.create("vae", image_size=64, latent_dim=32)`` (light conv encoder), or
  ``heads.create("vae", encoder="backbone", backbone="tiny_vit")`` (shared backbone features)
* ``heads.create("expr-mlp", d_in=384, d_out=50)``, ``"expr-gated"`` (image/genomic gated
  fusion) and ``"expr-contrastive"`` (BLEEP): the torch heads of
  :func:`mmpath.tl.fit_expression` (:mod:`.expression`)
* ``heads.create("abmil", in_dim=384, n_outputs=2)`` and the other MIL pools (:mod:`.mil`)

Their training tasks live in :mod:`mmpath.train.tasks` (one module per task).

``mmpath.models`` imports this subpackage first (which registers the entries) and then binds
the name ``heads`` to the registry, as it does for ``encoders``: ``mm.models.heads`` is the
registry; the classes are imported from ``mmpath.models.heads.<module>``.

Example
-------
>>> from mmpath.models.registry import heads
>>> unet = heads.create("unet", encoder="tiny_vit", num_classes=3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmpath.models.heads._folder import TrainedHead, load_trained_head, save_trained_head
from mmpath.models.heads.losses import DiceCELoss, SegLoss, class_weights_from_masks, soft_dice
from mmpath.models.heads.unet import UNetConfig, UNetHead
from mmpath.models.heads.vae import (
    AnomalyScores,
    VAEConfig,
    VAEHead,
    VAELoss,
    VAEOutput,
    reparameterize,
)
from mmpath.models.registry import heads

__all__ = [
    "UNetConfig",
    "UNetHead",
    "VAEConfig",
    "VAEHead",
    "VAEOutput",
    "VAELoss",
    "AnomalyScores",
    "reparameterize",
    "DiceCELoss",
    "SegLoss",
    "soft_dice",
    "class_weights_from_masks",
    "TrainedHead",
    "save_trained_head",
    "load_trained_head",
    "HeadInfo",
]


@dataclass(frozen=True)
class HeadInfo:
    """What a head registry entry is (listed without building it)."""

    task: str
    description: str
    needs_encoder: bool


def _encoder(encoder: Any) -> Any:
    from mmpath.models.factory import create_encoder

    return create_encoder(encoder) if isinstance(encoder, str) else encoder


@heads.register(
    "unet",
    meta=HeadInfo("seg", "U-Net / UNETR decoder over forward_intermediates", True),
    aliases=("unetr",),
)
def unet(
    *, encoder: Any = "mmpath-demo-vit", input_size: int | None = None, **config: Any
) -> UNetHead:
    """A U-Net head on ``encoder`` (a name or an Encoder); ``config`` = UNetConfig fields."""
    return UNetHead(_encoder(encoder), UNetConfig(**config), input_size=input_size)


@heads.register(
    "vae", meta=HeadInfo("anomaly", "convolutional VAE (conv or backbone encoder)", False)
)
def vae(*, backbone: Any = None, **config: Any) -> VAEHead:
    """A VAE head; ``encoder="backbone"`` reads ``backbone`` (a name or an Encoder)."""
    bb = _encoder(backbone) if backbone is not None else None
    return VAEHead(VAEConfig(**config), backbone=bb)


def _mil(kind: str):
    def build(**config: Any):
        from mmpath.models.heads.mil import MILConfig, MILHead

        return MILHead(MILConfig(kind=kind, **config))

    build.__doc__ = f"A {kind} MIL head; ``config`` = MILConfig fields (``in_dim``, ...)."
    return build


for _kind, _what in (
    ("abmil", "gated attention MIL (torchmil AttentionPool)"),
    ("transmil", "TransMIL (torchmil)"),
    ("mean-mlp", "mean pooling + MLP baseline"),
    ("max-mlp", "max pooling + MLP baseline"),
):
    heads.register(_kind, meta=HeadInfo("mil", _what, False))(_mil(_kind))


@heads.register(
    "expr-mlp",
    meta=HeadInfo("expression", "MLP on embeddings (+ concatenated genomic vector)", False),
)
def expr_mlp(*, d_in: int, d_out: int, hidden: int = 256, dropout: float = 0.1):
    """``Linear -> GELU -> Dropout -> Linear`` from ``d_in`` features to ``d_out`` genes."""
    from mmpath.models.heads.expression import MLPHead

    return MLPHead(d_in, d_out, hidden, dropout)


@heads.register("expr-gated", meta=HeadInfo("expression", "gated image/genomic fusion MLP", False))
def expr_gated(*, d_img: int, d_gen: int, d_out: int, hidden: int = 256, dropout: float = 0.1):
    """Image and genomic inputs mixed per feature by a learned sigmoid gate."""
    from mmpath.models.heads.expression import GatedFusionHead

    return GatedFusionHead(d_img, d_gen, d_out, hidden, dropout)


@heads.register(
    "expr-contrastive",
    meta=HeadInfo("expression", "BLEEP image/expression contrastive projections", False),
)
def expr_contrastive(
    *, d_img: int, n_genes: int, dim: int = 128, temperature: float = 1.0, dropout: float = 0.1
):
    """BLEEP projection heads (prediction = mean expression of the nearest reference spots)."""
    from mmpath.models.heads.expression import ContrastiveHeads

    return ContrastiveHeads(d_img, n_genes, dim, temperature, dropout)
