"""Encoders, heads and weights: the only subpackage that imports torch at import.

Example
-------
>>> import mmpath as mm
>>> enc = mm.models.create_encoder("tiny_clip")
>>> enc.info.kind
'image-text'
"""

from __future__ import annotations

# Import the entry subpackages first (they register themselves); the registries bound below
# then take the names `encoders` and `heads` in this namespace.
from mmpath.models import encoders as _encoders  # noqa: F401
from mmpath.models import heads as _heads  # noqa: F401
from mmpath.models.base import DataConfig, Encoder, EncoderInfo, ImageEmbedding, Tokens
from mmpath.models.factory import create_encoder
from mmpath.models.local_dir import load_encoder, save_encoder
from mmpath.models.registry import (
    encoders,
    families,
    heads,
    list_encoders,
    register_encoder,
)
from mmpath.models.weights import WeightsSpec, resolve_weights

__all__ = [
    "DataConfig",
    "Encoder",
    "EncoderInfo",
    "ImageEmbedding",
    "Tokens",
    "WeightsSpec",
    "create_encoder",
    "encoders",
    "families",
    "heads",
    "list_encoders",
    "load_encoder",
    "register_encoder",
    "resolve_weights",
    "save_encoder",
]
