"""Encoder families and registry entries; importing this package registers them."""

from __future__ import annotations

from mmpath.models.encoders import (  # noqa: F401
    clip_open,
    conch,
    demo,
    hf,
    pair,
    pathology,
    pathology_more,
    remote,
    text,
    timm_tower,
    tiny,
)
