"""Multiple-instance learning heads over tile embeddings: ABMIL, TransMIL, pooled MLP.

A slide (or a patient) is a *bag* of tile embeddings ``(N, D)``; a MIL head turns it into
slide-level outputs and, where it has one, an attention score per tile. Built on torchmil
(Apache-2.0; the ``mil`` extra):

* ``abmil``: gated attention MIL (Ilse et al. 2018, as CLAM/STAMP use it): a projection
  ``Linear(D, hidden) + ReLU + Dropout``, torchmil's gated :class:`AttentionPool`, dropout and a
  linear classifier. Attention = the pool's softmax weights.
* ``transmil``: torchmil's :class:`TransMIL` (Nyström transformer layers + PPEG, class token)
  with a ``n_outputs`` classifier; attention = the class token's last-layer attention.
* ``mean-mlp`` / ``max-mlp``: torchmil's mean / max pooling then an MLP (the baselines).

Every head maps ``(x (B, N, D), mask (B, N))`` to :class:`MILOutput` ``(logits (B, K),
attention (B, N) or None)``. ``K`` is the number of classes (classification), 1 (regression:
the standardised value; survival: the log-hazard). Defaults follow the anchors (CLAM,
STAMP): hidden 256, attention 128, dropout 0.25.

:func:`cox_loss` is the Cox partial likelihood the survival task minimises; its numpy
reference is :func:`mmpath.metrics.cox_ph_loss` (tested equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from mmpath.errors import ConfigError, ModelError

__all__ = ["MILConfig", "MILHead", "MILOutput", "cox_loss", "MIL_HEADS"]

#: registry name -> what it is (``mmpath list``)
MIL_HEADS = {
    "abmil": "gated attention MIL (Ilse et al. 2018; torchmil AttentionPool)",
    "transmil": "TransMIL (Shao et al. 2021; torchmil TransMIL)",
    "mean-mlp": "mean pooling + MLP baseline (torchmil MeanPool)",
    "max-mlp": "max pooling + MLP baseline (torchmil MaxPool)",
}


class MILOutput(NamedTuple):
    """Slide-level logits ``(B, K)`` and per-tile attention ``(B, N)`` (``None`` if none)."""

    logits: torch.Tensor
    attention: torch.Tensor | None


@dataclass(frozen=True)
class MILConfig:
    """A MIL head's architecture (saved in its model folder)."""

    kind: Literal["abmil", "transmil", "mean-mlp", "max-mlp"] = "abmil"
    in_dim: int = 0  # embedding width D of the tile features
    n_outputs: int = 2  # classes, or 1 for regression / survival
    hidden: int = 256
    att_dim: int = 128
    dropout: float = 0.25
    gated: bool = True  # abmil: gated attention (CLAM's default)
    n_layers: int = 2  # transmil
    n_heads: int = 4  # transmil (hidden must divide by it)

    def __post_init__(self) -> None:
        if self.kind not in MIL_HEADS:
            raise ConfigError(f"unknown MIL head {self.kind!r}; choose one of {list(MIL_HEADS)}")
        if self.in_dim < 1 or self.n_outputs < 1:
            raise ConfigError("a MIL head needs in_dim >= 1 and n_outputs >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kind == "transmil" and self.hidden % self.n_heads:
            raise ConfigError(f"transmil: hidden={self.hidden} must divide by n_heads")


def _torchmil():
    try:
        import torchmil.nn as tnn
    except ModuleNotFoundError:
        raise ModelError(
            "MIL heads need torchmil: pip install 'mmpath[mil]' (or pip install torchmil)"
        ) from None
    return tnn


class MILHead(nn.Module):
    """One of the MIL heads of :data:`MIL_HEADS` (see the module docstring).

    Example
    -------
    >>> head = MILHead(MILConfig("abmil", in_dim=384, n_outputs=2))
    >>> out = head(torch.randn(1, 500, 384))
    >>> out.logits.shape, out.attention.shape
    (torch.Size([1, 2]), torch.Size([1, 500]))
    """

    def __init__(self, config: MILConfig) -> None:
        super().__init__()
        self.config = c = config
        tnn = _torchmil()
        if c.kind == "abmil":
            self.proj = nn.Sequential(
                nn.Linear(c.in_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout)
            )
            self.pool = tnn.AttentionPool(in_dim=c.hidden, att_dim=c.att_dim, gated=c.gated)
            self.classifier = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.hidden, c.n_outputs))
        elif c.kind == "transmil":
            from torchmil.models import TransMIL  # imports tensordict (slow): only when asked

            self.model = TransMIL(
                in_shape=(c.in_dim,),
                att_dim=c.hidden,
                n_layers=c.n_layers,
                n_heads=c.n_heads,
                dropout=c.dropout,
            )
            self.model.classifier = nn.Linear(c.hidden, c.n_outputs)
        else:
            self.pool = tnn.MeanPool() if c.kind == "mean-mlp" else tnn.MaxPool()
            self.classifier = nn.Sequential(
                nn.Linear(c.in_dim, c.hidden),
                nn.ReLU(),
                nn.Dropout(c.dropout),
                nn.Linear(c.hidden, c.n_outputs),
            )

    @property
    def has_attention(self) -> bool:
        """Whether the head scores tiles (ABMIL, TransMIL)."""
        return self.config.kind in ("abmil", "transmil")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` ``(B, N, D)`` (``mask`` ``(B, N)``, True = a real tile) -> :class:`MILOutput`."""
        if x.ndim == 2:
            x = x.unsqueeze(0)
        B, N, _ = x.shape
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=x.device)
        mask = mask.bool()
        kind = self.config.kind
        if kind == "abmil":
            z, f = self.pool(self.proj(x), mask, return_att=True)
            att = f.masked_fill(~mask, float("-inf")).softmax(-1)
            return MILOutput(self.classifier(z), att)
        if kind == "transmil":  # no mask support: run each bag at its own length
            logits, atts = [], torch.zeros(B, N, device=x.device, dtype=x.dtype)
            for b in range(B):
                n = int(mask[b].sum())
                out, a = self.model(x[b : b + 1, :n], return_att=True)
                logits.append(out.reshape(1, -1))
                atts[b, :n] = a[0, :n] / a[0, :n].sum().clamp_min(1e-12)
            return MILOutput(torch.cat(logits), atts)
        z = self.pool(x, mask)
        return MILOutput(self.classifier(z), None)


def logits_to_outputs(
    logits: torch.Tensor, task: str, y_mean: float = 0.0, y_std: float = 1.0
) -> np.ndarray:
    """A MIL head's outputs from its logits ``(n, K)``: class probabilities ``(n, K)``
    (classification), values in the target's units ``(n,)`` (regression: the head predicts
    the standardised target) or risks ``(n,)`` (survival)."""
    logits = logits.detach().float().cpu()
    if task == "classification":
        return logits.softmax(-1).numpy()
    first = logits[:, 0].double().numpy()
    return first * y_std + y_mean if task == "regression" else first


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood per event (Breslow ties) of a batch.

    Equal to :func:`mmpath.metrics.cox_ph_loss` (tested). A batch without an event gives 0
    (it carries no ranking information) with the graph kept, so the step is a no-op.

    Example
    -------
    >>> cox_loss(torch.zeros(2), torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))
    tensor(0.3466)
    """
    r = risk.reshape(-1).float()
    t = time.reshape(-1).float()
    e = event.reshape(-1).bool()
    if not e.any():
        return r.sum() * 0.0
    at_risk = t[None, :] >= t[:, None]  # (i, j): j is in i's risk set
    log_risk = torch.logsumexp(r[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    return -(r[e] - log_risk[e]).sum() / e.sum()
