"""Pathology foundation models, each built exactly as its model card builds it.

None of these has been run on its real weights here (they cannot be downloaded on the build
machines): ``verified=False`` until someone does, and ``mmpath list`` says so. Shapes are
checked on the ``meta`` device against the public checkpoints in tests/models.

Sources (model cards / config.json of the hub repositories):

* UNI: https://huggingface.co/MahmoodLab/UNI - ``timm.create_model("vit_large_patch16_224",
  img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)``.
* UNI2-h: https://huggingface.co/MahmoodLab/UNI2-h - ``vit_giant_patch14_224`` with
  ``patch_size=14, depth=24, num_heads=24, embed_dim=1536, mlp_ratio=2.66667*2,
  init_values=1e-5, no_embed_class=True, mlp_layer=SwiGLUPacked, act_layer=SiLU,
  reg_tokens=8, dynamic_img_size=True``.
* Virchow2: https://huggingface.co/paige-ai/Virchow2 - ``vit_huge_patch14_224`` with
  ``img_size=224, init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
  dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=SiLU``; embedding = CLS token
  concatenated with the mean of the patch tokens (after the 4 registers) -> 2560-d.
* Virchow (v1): https://huggingface.co/paige-ai/Virchow - the same construction as Virchow2
  without register tokens (``vit_huge_patch14_224``, ``img_size=224, init_values=1e-5,
  mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, mlp_layer=SwiGLUPacked,
  act_layer=SiLU``); embedding = CLS concatenated with the mean of the patch tokens -> 2560-d
  (what PRISM reads). Apache-2.0, gated.
* H-optimus-0: https://huggingface.co/bioptimus/H-optimus-0 - ``vit_giant_patch14_reg4_dinov2``
  with ``init_values=1e-5, dynamic_img_size=False``; mean (0.707223, 0.578729, 0.703617),
  std (0.211883, 0.230117, 0.177517); 0.5 µm/px.
* Prov-GigaPath: https://huggingface.co/prov-gigapath/prov-gigapath - config.json:
  ``vit_giant_patch14_dinov2`` with ``img_size=224, patch_size=16, embed_dim=1536, depth=40,
  num_heads=24, init_values=1e-5, mlp_ratio=5.33334`` (the architecture name says patch 14;
  the checkpoint's config overrides it to 16).
* Phikon: https://huggingface.co/owkin/phikon - transformers ``ViTModel`` (ViT-B/16, config.json
  of the repository), ``add_pooling_layer=False``, CLS token of the last layer (768-d).
* Phikon-v2: https://huggingface.co/owkin/phikon-v2 - transformers ``Dinov2Model`` ViT-L/16
  (1024-d, 24 layers, 16 heads), CLS token.
* PLIP: https://huggingface.co/vinid/plip - transformers ``CLIPModel`` with the configuration
  of openai/clip-vit-base-patch32 (512-d joint space).
* QuiltNet: https://huggingface.co/wisdomik/QuiltNet-B-32 - open_clip ``ViT-B-32``.
"""

from __future__ import annotations

from typing import Any

from mmpath.models.base import CLIP_MEAN, CLIP_STD, DataConfig, EncoderInfo
from mmpath.models.encoders.clip_open import OpenClipEncoder
from mmpath.models.encoders.hf import HFClipEncoder, HFVisionEncoder
from mmpath.models.encoders.timm_tower import TimmEncoder
from mmpath.models.registry import register_encoder
from mmpath.models.weights import WeightsSpec

NC_ND = "CC-BY-NC-ND-4.0 (gated)"
HALF = DataConfig(input_size=224, mpp=0.5)  # ImageNet mean/std, 224 px, 20x (0.5 µm/px)

# --- timm image towers -------------------------------------------------------------------

UNI_KW: dict[str, Any] = dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True)
UNI2_KW: dict[str, Any] = dict(
    img_size=224,
    patch_size=14,
    depth=24,
    num_heads=24,
    init_values=1e-5,
    embed_dim=1536,
    mlp_ratio=2.66667 * 2,
    no_embed_class=True,
    mlp_layer="SwiGLUPacked",
    act_layer="silu",
    reg_tokens=8,
    dynamic_img_size=True,
)
VIRCHOW2_KW: dict[str, Any] = dict(
    img_size=224,
    init_values=1e-5,
    reg_tokens=4,
    mlp_ratio=5.3375,
    global_pool="",
    dynamic_img_size=True,
    mlp_layer="SwiGLUPacked",
    act_layer="silu",
)
VIRCHOW_KW: dict[str, Any] = {k: v for k, v in VIRCHOW2_KW.items() if k != "reg_tokens"}
HOPTIMUS0_KW: dict[str, Any] = dict(img_size=224, init_values=1e-5, dynamic_img_size=False)
GIGAPATH_KW: dict[str, Any] = dict(
    img_size=224,
    in_chans=3,
    patch_size=16,
    embed_dim=1536,
    depth=40,
    num_heads=24,
    init_values=1e-5,
    mlp_ratio=5.33334,
)

UNI_INFO = EncoderInfo(
    "uni",
    "image",
    1024,
    data=HALF,
    pooling="cls",
    license=NC_ND,
    source="https://huggingface.co/MahmoodLab/UNI (Chen et al., Nat Med 2024)",
)
UNI2_INFO = EncoderInfo(
    "uni2",
    "image",
    1536,
    data=HALF,
    pooling="cls",
    license=NC_ND,
    source="https://huggingface.co/MahmoodLab/UNI2-h",
)
VIRCHOW2_INFO = EncoderInfo(
    "virchow2",
    "image",
    2560,
    data=HALF,
    pooling="cls+mean",
    license=NC_ND,
    source="https://huggingface.co/paige-ai/Virchow2 (Zimmermann et al., 2024)",
)
VIRCHOW_INFO = EncoderInfo(
    "virchow",
    "image",
    2560,
    data=HALF,
    pooling="cls+mean",
    license="Apache-2.0 (gated)",
    source="https://huggingface.co/paige-ai/Virchow (Vorontsov et al., Nat Med 2024)",
)
HOPTIMUS0_INFO = EncoderInfo(
    "h-optimus-0",
    "image",
    1536,
    data=DataConfig(
        input_size=224,
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        mpp=0.5,
    ),
    pooling="cls",
    license="Apache-2.0 (gated)",
    source="https://huggingface.co/bioptimus/H-optimus-0",
)
GIGAPATH_INFO = EncoderInfo(
    "prov-gigapath",
    "image",
    1536,
    data=HALF,
    pooling="cls",
    license="Apache-2.0 (gated)",
    source="https://huggingface.co/prov-gigapath/prov-gigapath (Xu et al., Nature 2024)",
)


def _gated(hub_id: str) -> WeightsSpec:
    return WeightsSpec(hub_id=hub_id, gated=True)


@register_encoder("uni", UNI_INFO, weights=_gated("MahmoodLab/UNI"), aliases=("uni1",))
def uni(**kwargs: Any) -> TimmEncoder:
    """UNI ViT-L/16 (1024-d CLS)."""
    return TimmEncoder("vit_large_patch16_224", info=UNI_INFO, **{**UNI_KW, **kwargs})


@register_encoder("uni2", UNI2_INFO, weights=_gated("MahmoodLab/UNI2-h"), aliases=("uni2-h",))
def uni2(**kwargs: Any) -> TimmEncoder:
    """UNI2-h ViT-H/14 with 8 registers and SwiGLU (1536-d CLS)."""
    return TimmEncoder("vit_giant_patch14_224", info=UNI2_INFO, **{**UNI2_KW, **kwargs})


@register_encoder("virchow2", VIRCHOW2_INFO, weights=_gated("paige-ai/Virchow2"))
def virchow2(**kwargs: Any) -> TimmEncoder:
    """Virchow2 ViT-H/14, 4 registers, SwiGLU; CLS + mean of patch tokens (2560-d)."""
    return TimmEncoder(
        "vit_huge_patch14_224",
        pooling="cls+mean",
        info=VIRCHOW2_INFO,
        **{**VIRCHOW2_KW, **kwargs},
    )


@register_encoder(
    "virchow", VIRCHOW_INFO, weights=_gated("paige-ai/Virchow"), aliases=("virchow1",)
)
def virchow(**kwargs: Any) -> TimmEncoder:
    """Virchow (v1) ViT-H/14, SwiGLU, no registers; CLS + mean of patch tokens (2560-d)."""
    return TimmEncoder(
        "vit_huge_patch14_224",
        pooling="cls+mean",
        info=VIRCHOW_INFO,
        **{**VIRCHOW_KW, **kwargs},
    )


@register_encoder(
    "h-optimus-0", HOPTIMUS0_INFO, weights=_gated("bioptimus/H-optimus-0"), aliases=("hoptimus0",)
)
def h_optimus_0(**kwargs: Any) -> TimmEncoder:
    """H-optimus-0 ViT-g/14 with 4 registers (1536-d CLS)."""
    return TimmEncoder(
        "vit_giant_patch14_reg4_dinov2", info=HOPTIMUS0_INFO, **{**HOPTIMUS0_KW, **kwargs}
    )


@register_encoder(
    "prov-gigapath",
    GIGAPATH_INFO,
    weights=_gated("prov-gigapath/prov-gigapath"),
    aliases=("gigapath",),
)
def prov_gigapath(**kwargs: Any) -> TimmEncoder:
    """Prov-GigaPath tile encoder ViT-g/16 (1536-d CLS)."""
    return TimmEncoder("vit_giant_patch14_dinov2", info=GIGAPATH_INFO, **{**GIGAPATH_KW, **kwargs})


# --- transformers image towers -----------------------------------------------------------

PHIKON_CONFIG: dict[str, Any] = dict(
    model_type="vit",
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    image_size=224,
    patch_size=16,
    qkv_bias=True,
    layer_norm_eps=1e-12,
    encoder_stride=16,
)
PHIKON2_CONFIG: dict[str, Any] = dict(
    model_type="dinov2",
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
    layerscale_value=1e-5,
    qkv_bias=True,
    use_swiglu_ffn=False,
)
OWKIN = "Owkin non-commercial"
PHIKON_INFO = EncoderInfo(
    "phikon",
    "image",
    768,
    data=HALF,
    pooling="cls",
    license=OWKIN,
    source="https://huggingface.co/owkin/phikon (Filiot et al., 2023)",
)
PHIKON2_INFO = EncoderInfo(
    "phikon-v2",
    "image",
    1024,
    data=HALF,
    pooling="cls",
    license=OWKIN,
    source="https://huggingface.co/owkin/phikon-v2 (Filiot et al., 2024)",
)


@register_encoder("phikon", PHIKON_INFO, weights=WeightsSpec(hub_id="owkin/phikon"))
def phikon(**kwargs: Any) -> HFVisionEncoder:
    """Phikon iBOT ViT-B/16 (768-d CLS), transformers ViTModel."""
    return HFVisionEncoder(config={**PHIKON_CONFIG, **kwargs}, info=PHIKON_INFO)


@register_encoder(
    "phikon-v2", PHIKON2_INFO, weights=WeightsSpec(hub_id="owkin/phikon-v2"), aliases=("phikon2",)
)
def phikon_v2(**kwargs: Any) -> HFVisionEncoder:
    """Phikon-v2 DINOv2 ViT-L/16 (1024-d CLS), transformers Dinov2Model."""
    return HFVisionEncoder(config={**PHIKON2_CONFIG, **kwargs}, info=PHIKON2_INFO)


# --- image-text models ---------------------------------------------------------------------

# openai/clip-vit-base-patch32, which PLIP fine-tunes (same config.json values)
PLIP_CONFIG: dict[str, Any] = dict(
    model_type="clip",
    projection_dim=512,
    text_config=dict(
        vocab_size=49408,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ),
    vision_config=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
    ),
)
CLIP224 = DataConfig(input_size=224, mean=CLIP_MEAN, std=CLIP_STD, mpp=None)
PLIP_INFO = EncoderInfo(
    "plip",
    "image-text",
    512,
    proj_dim=512,
    data=CLIP224,
    pooling="clip",
    license="research use only (see card)",
    source="https://huggingface.co/vinid/plip (Huang et al., Nat Med 2023)",
)
QUILT_INFO = EncoderInfo(
    "quiltnet",
    "image-text",
    512,
    proj_dim=512,
    data=CLIP224,
    pooling="clip",
    license="MIT",
    source="https://huggingface.co/wisdomik/QuiltNet-B-32 (Ikezogwo et al., NeurIPS 2023)",
)


@register_encoder("plip", PLIP_INFO, weights=WeightsSpec(hub_id="vinid/plip"))
def plip() -> HFClipEncoder:
    """PLIP: CLIP ViT-B/32 in transformers format (512-d)."""
    return HFClipEncoder(config=PLIP_CONFIG, info=PLIP_INFO)


@register_encoder(
    "quiltnet",
    QUILT_INFO,
    weights=WeightsSpec(hub_id="wisdomik/QuiltNet-B-32"),
    aliases=("quiltnet-b-32",),
)
def quiltnet() -> OpenClipEncoder:
    """QuiltNet-B-32: open_clip ViT-B-32 (512-d)."""
    return OpenClipEncoder("ViT-B-32", info=QUILT_INFO)
