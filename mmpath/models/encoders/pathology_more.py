"""More pathology foundation models (issue 16), each built as its model card / reference loader
builds it, from timm, transformers or open_clip; random weights until real ones are loaded.

None of these has been run on its real weights here (the hub is not reachable from the build
machines): ``verified=False``, and ``mmpath list`` says so. Shapes are checked at full size on
the ``meta`` device in tests/models/test_real_entries.py against what the public code builds.
Where a value could not be read from the checkpoint's own ``config.json`` it is said below.

* H-optimus-1 (https://huggingface.co/bioptimus/H-optimus-1): the card's
  ``timm.create_model("hf-hub:bioptimus/H-optimus-1", init_values=1e-5,
  dynamic_img_size=False)`` on ``vit_giant_patch14_reg4_dinov2``; the same architecture and
  normalisation as H-optimus-0 (CLS, 1536-d).
* H0-mini (https://huggingface.co/bioptimus/H0-mini): ``vit_base_patch14_reg4_dinov2`` with the
  card's ``mlp_layer=SwiGLUPacked, act_layer=SiLU``; output (1, 261, 768) at 224 px (CLS, 4
  registers, 256 patches); embedding = CLS concatenated with the mean of the patch tokens
  (1536-d), as the card's code ends. ``mlp_ratio=5.33334`` (fc1 4096 / fc2 2048, DINOv2's
  fused SwiGLU width for ViT-B, giving the card's 86M parameters) is inferred, not read from
  the repository's ``config.json``.
* GPFM (https://huggingface.co/majiabo/GPFM): Trident's loader,
  ``timm.create_model("vit_large_patch14_dinov2.lvd142m", img_size=224, init_values=1e-5,
  dynamic_img_size=True)`` then a strict load of ``GPFM.pth``; CLS, 1024-d.
* Midnight-12k (https://huggingface.co/kaiko-ai/midnight, code at github.com/kaiko-ai/Midnight):
  ``AutoModel.from_pretrained`` (a transformers ``Dinov2Model``; DINOv2 ViT-g/14 with the fused
  SwiGLU MLP, trained from ``dinov2_vitg14``); input 224 px normalised with mean = std = 0.5;
  classification embedding = CLS concatenated with the mean of the patch tokens (3072-d). The
  config values are those of ``facebook/dinov2-giant`` (image_size 518 for the position
  table), inferred from the training start point, not read from the repository.
* CONCH v1.5 (https://huggingface.co/MahmoodLab/conchv1_5; the vision tower TITAN reads): the
  reference ``CONCHVisionTower`` (TITAN's ``return_conch``, Trident's ``conchv1_5.py``) is a
  timm-layout ViT-L/16 (``init_values=1.0``, 224 px position table interpolated DINO-style to
  the 448 px input) + a CoCa attentional pooler (1 query, 8 heads, 1024 -> 768) + LayerNorm;
  768-d. Built here from timm + :class:`AttentionalPooler` (proven equal to
  ``torch.nn.MultiheadAttention`` in tests); weights ``pytorch_model_vision.bin``.
* OmiCLIP (Loki, https://huggingface.co/WangGuangyuLab/Loki): Loki's ``load_model`` is
  ``open_clip.create_model_from_pretrained("coca_ViT-L-14", pretrained=checkpoint.pt)``;
  image-text, 768-d joint space.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmpath.models.base import CLIP_MEAN, CLIP_STD, DataConfig, Encoder, EncoderInfo, ImageEmbedding
from mmpath.models.encoders.clip_open import OpenClipEncoder
from mmpath.models.encoders.hf import HFVisionEncoder
from mmpath.models.encoders.pathology import HOPTIMUS0_INFO, HOPTIMUS0_KW
from mmpath.models.encoders.timm_tower import TimmEncoder
from mmpath.models.registry import families, register_encoder
from mmpath.models.weights import WeightsSpec

__all__ = ["AttentionalPooler", "ConchV15Encoder", "dino_interpolate_pos"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NOT_CHECKED = "see the model card (licence not checked here)"


class _NamedFiles:
    """Weights read from the file names the authors publish (``GPFM.pth``...)."""

    weights_files: tuple[str, ...] = ()

    def load_pretrained(self, location, *, sha256: str | None = None) -> None:
        from mmpath.models.weights import read_state_dict

        state = read_state_dict(location, files=self.weights_files, sha256=sha256)
        self.load_checkpoint(state)  # type: ignore[attr-defined]


class _FileTimmEncoder(_NamedFiles, TimmEncoder):
    def __init__(self, arch: str, *, files: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(arch, **kwargs)
        self.weights_files = files


# --- timm: H-optimus-1, H0-mini, GPFM ------------------------------------------------------

H0MINI_KW: dict[str, Any] = dict(
    img_size=224,
    mlp_ratio=2.66667 * 2,
    mlp_layer="SwiGLUPacked",
    act_layer="silu",
    dynamic_img_size=True,
)
GPFM_KW: dict[str, Any] = dict(img_size=224, init_values=1e-5, dynamic_img_size=True)
HALF_IMAGENET = DataConfig(input_size=224, mean=IMAGENET[0], std=IMAGENET[1], mpp=0.5)

HOPTIMUS1_INFO = EncoderInfo(
    "h-optimus-1",
    "image",
    1536,
    data=HOPTIMUS0_INFO.data,
    pooling="cls",
    license=f"gated; {NOT_CHECKED}",
    source="https://huggingface.co/bioptimus/H-optimus-1",
)
H0MINI_INFO = EncoderInfo(
    "h0-mini",
    "image",
    1536,
    data=HOPTIMUS0_INFO.data,
    pooling="cls+mean",
    license=f"gated; {NOT_CHECKED}",
    source="https://huggingface.co/bioptimus/H0-mini (Filiot et al., 2025)",
)
GPFM_INFO = EncoderInfo(
    "gpfm",
    "image",
    1024,
    data=HALF_IMAGENET,
    pooling="cls",
    license=f"not gated; {NOT_CHECKED}",
    source="https://huggingface.co/majiabo/GPFM (Ma et al., 2024)",
)


@register_encoder(
    "h-optimus-1",
    HOPTIMUS1_INFO,
    weights=WeightsSpec(hub_id="bioptimus/H-optimus-1", gated=True),
    aliases=("hoptimus1",),
)
def h_optimus_1(**kwargs: Any) -> TimmEncoder:
    """H-optimus-1 ViT-g/14 with 4 registers (1536-d CLS)."""
    return TimmEncoder(
        "vit_giant_patch14_reg4_dinov2", info=HOPTIMUS1_INFO, **{**HOPTIMUS0_KW, **kwargs}
    )


@register_encoder(
    "h0-mini", H0MINI_INFO, weights=WeightsSpec(hub_id="bioptimus/H0-mini", gated=True)
)
def h0_mini(**kwargs: Any) -> TimmEncoder:
    """H0-mini ViT-B/14, 4 registers, SwiGLU; CLS + mean of patch tokens (1536-d)."""
    return TimmEncoder(
        "vit_base_patch14_reg4_dinov2",
        pooling="cls+mean",
        info=H0MINI_INFO,
        **{**H0MINI_KW, **kwargs},
    )


@register_encoder(
    "gpfm", GPFM_INFO, weights=WeightsSpec(hub_id="majiabo/GPFM", files=("GPFM.pth",))
)
def gpfm(**kwargs: Any) -> TimmEncoder:
    """GPFM DINOv2 ViT-L/14 (1024-d CLS), weights ``GPFM.pth``."""
    return _FileTimmEncoder(
        "vit_large_patch14_dinov2.lvd142m",
        files=("GPFM.pth",),
        info=GPFM_INFO,
        **{**GPFM_KW, **kwargs},
    )


# --- transformers: Midnight-12k -----------------------------------------------------------

MIDNIGHT_CONFIG: dict[str, Any] = dict(
    model_type="dinov2",
    hidden_size=1536,
    num_hidden_layers=40,
    num_attention_heads=24,
    mlp_ratio=4,
    image_size=518,
    patch_size=14,
    layer_norm_eps=1e-6,
    layerscale_value=1.0,
    qkv_bias=True,
    use_swiglu_ffn=True,
)
MIDNIGHT_INFO = EncoderInfo(
    "midnight",
    "image",
    3072,
    data=DataConfig(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mpp=0.5),
    pooling="cls+mean",
    license="MIT (not gated)",
    source="https://huggingface.co/kaiko-ai/midnight (Karasikov et al., 2025)",
)


@register_encoder(
    "midnight",
    MIDNIGHT_INFO,
    weights=WeightsSpec(hub_id="kaiko-ai/midnight"),
    aliases=("midnight-12k", "midnight12k"),
)
def midnight() -> HFVisionEncoder:
    """Midnight-12k DINOv2 ViT-g/14 (transformers); CLS + mean of patch tokens (3072-d)."""
    enc = HFVisionEncoder(config=MIDNIGHT_CONFIG, info=MIDNIGHT_INFO, pooling="cls+mean")
    enc._spec = ("hf_vision", {"config": MIDNIGHT_CONFIG, "pooling": "cls+mean"})
    return enc


# --- CONCH v1.5 ----------------------------------------------------------------------------


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler with the parameter names of the CONCH v1.5 checkpoint.

    ``n_queries`` learned queries attend (``n_head`` heads, no biases) over the layer-normed
    tokens: softmax(q kᵀ / √d) v, then an output projection. The same computation as
    ``torch.nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim,
    bias=False)`` on the normed query and tokens (tested).
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, context_dim) tokens -> (B, n_queries, d_model)."""
        b = x.shape[0]
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


def dino_interpolate_pos(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINO/iBOT's position-table interpolation (bicubic, scale factor (g + 0.1) / √N).

    ``pos_embed`` is (1, 1 + N, C) with a class-token entry; returns (1, 1 + h*w, C). This is
    what the CONCH v1.5 reference code does at any input size other than its table's.
    """
    n = pos_embed.shape[1] - 1
    h, w = grid
    if n == h * w and h == w:
        return pos_embed
    side = int(math.sqrt(n))
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=((h + 0.1) / side, (w + 0.1) / side),
        mode="bicubic",
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


def _dino_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for NHWC input, with DINO's interpolation."""
    b, h, w, c = x.shape
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
    return self.pos_drop(x + dino_interpolate_pos(self.pos_embed, (h, w)))


class _ConchV15Tower(nn.Module):
    """Module layout of the reference ``CONCHVisionTower`` (checkpoint key names)."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model(
            "vit_large_patch16_224",
            pretrained=False,
            num_classes=0,
            img_size=224,
            init_values=1.0,
            dynamic_img_size=True,
        )
        self.trunk._pos_embed = types.MethodType(_dino_pos_embed, self.trunk)
        self.attn_pool_contrast = AttentionalPooler(768, 1024, n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


CONCH15_INFO = EncoderInfo(
    "conch_v15",
    "image",
    768,
    data=DataConfig(input_size=448, mean=IMAGENET[0], std=IMAGENET[1], mpp=0.5),
    pooling="attentional (CoCa)",
    license="CC-BY-NC-ND-4.0 (gated)",
    source="https://huggingface.co/MahmoodLab/conchv1_5 (vision tower of TITAN; Ding et al.)",
)


class ConchV15Encoder(_NamedFiles, Encoder):
    """CONCH v1.5 vision tower: ViT-L/16 at 448 px + attentional pooler (768-d)."""

    weights_files = ("pytorch_model_vision.bin",)

    def __init__(self) -> None:
        super().__init__()
        self.model = _ConchV15Tower()
        self.info = CONCH15_INFO
        self._spec = ("conch_v15", {})

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        return ImageEmbedding(self.model(x), None)

    def forward_intermediates(self, x: torch.Tensor, indices=4) -> list[torch.Tensor]:
        idx = indices if isinstance(indices, int) else list(indices)
        trunk = self.model.trunk
        return list(
            trunk.forward_intermediates(x, indices=idx, intermediates_only=True, output_fmt="NCHW")
        )

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strict; a position table of another size is resampled as the reference loader does
        (timm ``resample_abs_pos_embed``, bilinear, no antialias) to the 14x14 table."""
        from timm.layers import resample_abs_pos_embed

        from mmpath.models.weights import load_strict

        state = dict(state_dict)
        own = self.model.trunk.pos_embed
        pos = state.get("trunk.pos_embed")
        if pos is not None and tuple(pos.shape) != tuple(own.shape):
            state["trunk.pos_embed"] = resample_abs_pos_embed(
                pos,
                new_size=self.model.trunk.patch_embed.grid_size,
                num_prefix_tokens=1,
                interpolation="bilinear",
                antialias=False,
                verbose=False,
            )
        load_strict(self.model, state, name=self.info.name)


@families.register("conch_v15")
def conch_v15_family() -> ConchV15Encoder:
    """CONCH v1.5's vision tower (random init)."""
    return ConchV15Encoder()


@register_encoder(
    "conch_v15",
    CONCH15_INFO,
    weights=WeightsSpec(
        hub_id="MahmoodLab/conchv1_5", files=("pytorch_model_vision.bin",), gated=True
    ),
    aliases=("conch-v1.5", "conchv1_5", "conch-v15"),
)
def conch_v15() -> ConchV15Encoder:
    """CONCH v1.5 vision tower, 448 px, 768-d (the features TITAN and FEATHER read)."""
    return ConchV15Encoder()


# --- open_clip: OmiCLIP --------------------------------------------------------------------

OMICLIP_INFO = EncoderInfo(
    "omiclip",
    "image-text",
    768,
    proj_dim=768,
    data=DataConfig(input_size=224, mean=CLIP_MEAN, std=CLIP_STD, mpp=None),
    pooling="clip",
    license=f"gating not checked; {NOT_CHECKED}",
    source="https://huggingface.co/WangGuangyuLab/Loki (OmiCLIP in Loki; Chen et al., 2025)",
)


class _OmiClipEncoder(_NamedFiles, OpenClipEncoder):
    weights_files = ("checkpoint.pt",)


@register_encoder(
    "omiclip",
    OMICLIP_INFO,
    weights=WeightsSpec(hub_id="WangGuangyuLab/Loki", files=("checkpoint.pt",)),
    aliases=("loki",),
)
def omiclip() -> OpenClipEncoder:
    """OmiCLIP: open_clip CoCa ViT-L/14 (768-d joint space), Loki's ``checkpoint.pt``."""
    return _OmiClipEncoder("coca_ViT-L-14", info=OMICLIP_INFO)
