"""The demo's default models, shipped inside the package (``mmpath/data/models/``).

* ``mmpath-demo-vit`` (alias ``demo-vit``): a ~1.3M-parameter ViT (6 blocks, width 128,
  112 px at 0.5 µm/px) SimCLR-pretrained on tiles of the bundled real H&E sample plus
  synthetic tissue.
* ``mmpath-demo-lit`` (alias ``demo-lit``): LiT on the locked all-MiniLM-L6-v2 text tower
  (referenced by registry name, resolved like ``minilm``) with the image tower initialised
  from ``mmpath-demo-vit``, trained on weak captions from measured tile properties; it knows
  :data:`DEMO_LIT_CLASSES`.

Both were made by ``tools/make_demo_models.py``; each folder's README.md is its model card.
They are demo models, not foundation models, and nothing they output is diagnostic.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mmpath.models.base import DataConfig, Encoder, EncoderInfo
from mmpath.models.registry import register_encoder
from mmpath.models.weights import WeightsSpec, resolve_weights

__all__ = [
    "DEMO_LIT_CLASSES",
    "DEMO_LIT_PHRASES",
    "DEMO_MPP",
    "DEMO_DATA",
    "packaged_model_dir",
]

# Concepts the LiT demo model was trained to name (see its model card for the bins).
DEMO_LIT_CLASSES: tuple[str, ...] = ("background glass", "dense nuclei", "eosin-rich stroma")
DEMO_MPP = 0.5
# timm's vit_tiny config (mean = std = 0.5), as used in training; 112 px tiles at 0.5 µm/px
DEMO_DATA = DataConfig(input_size=112, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mpp=DEMO_MPP)
_LICENSE = "CC0-1.0 (trained by mmpath on CC0 and synthetic data)"
_NOTE = "demo model, not a foundation model; outputs are not diagnostic"
# The concept phrases its weak captions were made of (tools/demo_captions.py draws from these,
# by measured tile bin); zero-shot warns about class names far from all of them.
DEMO_LIT_PHRASES: dict[str, tuple[str, ...]] = {
    "glass": (
        "background glass",
        "mostly background glass with no tissue",
        "empty glass slide background",
        "blank background glass",
    ),
    "dense": (
        "dense nuclei",
        "densely packed nuclei",
        "dense nuclei in haematoxylin-rich tissue",
        "crowded dense nuclei",
    ),
    "moderate": ("moderately dense nuclei", "tissue with a moderate number of nuclei"),
    "moderate_eosin": ("eosin-rich tissue with moderately dense nuclei",),
    "sparse": ("sparse nuclei", "eosin-rich stroma with sparse nuclei", "eosin-rich stroma"),
    "sparse_haematoxylin": ("sparse nuclei", "tissue with sparse nuclei"),
    "partial": (
        "the edge of the tissue, partly background glass",
        "a tissue border next to background glass",
    ),
}
DEMO_LIT_VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(p for phrases in DEMO_LIT_PHRASES.values() for p in phrases)
)


def _caveat(name: str) -> str:
    return (
        f"{name} is a demo model (trained in minutes on one CC0 sample slide and synthetic "
        "tissue): its outputs illustrate the pipeline and are not diagnostic"
    )


def packaged_model_dir(name: str) -> Path:
    """``mmpath/data/models/<name>`` (may not exist in a source tree without the models)."""
    return Path(__file__).resolve().parents[2] / "data" / "models" / name


def _spec(name: str) -> WeightsSpec:
    return WeightsSpec(package=f"mmpath:data/models/{name}")


def _build(name: str) -> Encoder:
    """The architecture (random weights) from the packaged folder's config.yaml."""
    from mmpath.models.local_dir import _resolve_paths, create_from_config, read_config

    folder = resolve_weights(name, _spec(name))
    if not folder.is_dir():
        folder = folder.parent
    config = read_config(folder)
    kwargs: dict[str, Any] = _resolve_paths(config.get("kwargs") or {}, folder)
    enc = create_from_config(config["family"], kwargs, folder)
    enc.info = replace(enc.info, data=DEMO_DATA)  # the tiles it was trained on
    return enc


VIT_INFO = EncoderInfo(
    "mmpath-demo-vit",
    "image",
    128,
    data=DEMO_DATA,
    pooling="cls",
    slug="demo_vit",
    license=_LICENSE,
    source=f"tools/make_demo_models.py; {_NOTE}",
    verified=True,  # its shipped weights: tests/models/test_demo_models.py runs them
)
LIT_INFO = EncoderInfo(
    "mmpath-demo-lit",
    "image-text",
    128,
    proj_dim=128,
    data=DEMO_DATA,
    pooling="cls",
    slug="demo_lit",
    license=f"{_LICENSE}; text tower all-MiniLM-L6-v2 Apache-2.0",
    source=f"tools/make_demo_models.py; {_NOTE}",
    verified=True,  # its shipped weights: tests/models/test_demo_models.py runs them
)


@register_encoder(
    "mmpath-demo-vit",
    VIT_INFO,
    weights=_spec("mmpath-demo-vit"),
    aliases=("demo-vit",),
    caveat=_caveat("mmpath-demo-vit"),
)
def demo_vit() -> Encoder:
    """The demo image encoder (SSL-pretrained small ViT, packaged weights)."""
    return _build("mmpath-demo-vit")


@register_encoder(
    "mmpath-demo-lit",
    LIT_INFO,
    weights=_spec("mmpath-demo-lit"),
    aliases=("demo-lit",),
    caveat=_caveat("mmpath-demo-lit"),
    vocabulary=DEMO_LIT_VOCABULARY,
)
def demo_lit() -> Encoder:
    """The demo image-text model (LiT on locked MiniLM, packaged weights)."""
    return _build("mmpath-demo-lit")
