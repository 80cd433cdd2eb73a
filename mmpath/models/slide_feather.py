"""FEATHER (MahmoodLab's MIL-Lab): a gated-attention ABMIL slide encoder, built offline.

The published FEATHER-24K models (``MahmoodLab/abmil.base.<patch encoder>.pc108-24k``) are
MIL-Lab's ``ABMIL`` with its ``abmil/base.yaml``: ``patch_embed`` = Linear(in, 512) + ReLU,
gated attention (``attention_a`` Linear(512, 384) + tanh, ``attention_b`` Linear(512, 384) +
sigmoid, ``attention_c`` Linear(384, 1)), softmax over the tiles, the attention-weighted sum
of the embedded tiles = the 512-d slide embedding (``forward_features``; Trident reads that),
then a 108-way PC-108 classifier that is not part of the embedding.

Here the attention pooling is torchmil's :class:`torchmil.nn.AttentionPool` (gated, tanh),
the same computation: its scoring layer has no bias, and ``attention_c.bias`` adds one
constant to every tile's score, which the softmax removes (tested against the reference
formula). Checkpoint names (``model.patch_embed.0.weight``...) are mapped on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FeatherABMIL", "FEATHER_KEYS"]

# reference (MIL-Lab, under the Hugging Face wrapper's "model.") -> ours
FEATHER_KEYS = {
    "model.patch_embed.0.weight": "patch_embed.0.weight",
    "model.patch_embed.0.bias": "patch_embed.0.bias",
    "model.global_attn.attention_a.0.weight": "pool.fc1.module.weight",
    "model.global_attn.attention_a.0.bias": "pool.fc1.module.bias",
    "model.global_attn.attention_b.0.weight": "pool.fc_gated.module.weight",
    "model.global_attn.attention_b.0.bias": "pool.fc_gated.module.bias",
    "model.global_attn.attention_c.weight": "pool.fc2.weight",
}
# in the checkpoint but not in the embedding: the score bias (softmax-invariant), the head
FEATHER_UNUSED = ("model.global_attn.attention_c.bias", "model.classifier.")


class FeatherABMIL(nn.Module):
    """FEATHER's ABMIL: ``forward_features(x (B, N, in_dim)) -> (slide (B, 512), scores)``."""

    def __init__(self, in_dim: int = 768, embed_dim: int = 512, attn_dim: int = 384) -> None:
        super().__init__()
        from torchmil.nn import AttentionPool

        self.patch_embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU())
        self.pool = AttentionPool(in_dim=embed_dim, att_dim=attn_dim, act="tanh", gated=True)
        self.embed_dim = embed_dim

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Slide embeddings and the attention scores before the softmax."""
        z, scores = self.pool(self.patch_embed(x), mask, return_att=True)
        return z, {"attention": scores}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def load_reference_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a FEATHER checkpoint (MIL-Lab names); anything else missing or extra is an
        error (:class:`~mmpath.errors.WeightsError`)."""
        from mmpath.errors import WeightsError
        from mmpath.models.weights import load_strict

        extra = [k for k in state if k not in FEATHER_KEYS and not k.startswith(FEATHER_UNUSED)]
        if extra:
            raise WeightsError(
                f"the FEATHER checkpoint holds tensors this architecture does not have "
                f"({', '.join(extra[:4])}): is it another MIL-Lab model?"
            )
        mapped = {FEATHER_KEYS[k]: v for k, v in state.items() if k in FEATHER_KEYS}
        load_strict(self, mapped, name="feather")
