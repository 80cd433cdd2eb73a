"""Torch heads for expression: an MLP, a gated image/genomic fusion, BLEEP-style contrastive.

Registered in :data:`mmpath.models.registry.heads` as ``expr-mlp``, ``expr-gated`` and
``expr-contrastive``; :class:`mmpath.tl.expression.ExpressionModel` builds them and they train
through the one loop (:func:`mmpath.train.fit`, task ``expr`` in
:mod:`mmpath.train.tasks.expr`), in memory for :func:`mmpath.tl.fit_expression`.

* :class:`MLPHead`: ``Linear -> GELU -> Dropout -> Linear`` on frozen embeddings (optionally
  concatenated with the genomic vector: "concat" fusion).
* :class:`GatedFusionHead`: image and genomic inputs are projected to one width; a sigmoid
  gate computed from both mixes them per feature (``h = g * h_img + (1 - g) * h_gen``), then an
  MLP predicts expression. The gate lets the model lean on the genomic vector for genes the
  image cannot see, and ignore it elsewhere.
* :class:`ContrastiveHeads`: BLEEP (Xie et al., NeurIPS 2023) aligns image and expression
  embeddings with a CLIP-style loss whose targets are soft: the softmax of the mean of the
  image-image and expression-expression similarities. Prediction averages the expression of
  the reference spots whose expression embeddings are nearest to the query image embedding.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class MLPHead(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x if g is None else torch.cat([x, g], dim=1))


class GatedFusionHead(nn.Module):
    def __init__(self, d_img: int, d_gen: int, d_out: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.img = nn.Linear(d_img, hidden)
        self.gen = nn.Linear(d_gen, hidden)
        self.gate = nn.Linear(d_img + d_gen, hidden)
        self.out = nn.Sequential(
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, d_out),
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat([x, g], dim=1)))
        return self.out(gate * self.img(x) + (1 - gate) * self.gen(g))


def _proj(d_in: int, d_out: int, dropout: float) -> nn.Module:
    # BLEEP's projection head: linear projection + a residual GELU/linear block + LayerNorm.
    class Proj(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(d_in, d_out)
            self.fc = nn.Linear(d_out, d_out)
            self.drop = nn.Dropout(dropout)
            self.norm = nn.LayerNorm(d_out)

        def forward(self, x):
            p = self.lin(x)
            return self.norm(p + self.drop(self.fc(F.gelu(p))))

    return Proj()


class ContrastiveHeads(nn.Module):
    def __init__(
        self,
        d_img: int,
        n_genes: int,
        dim: int = 128,
        temperature: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.image = _proj(d_img, dim, dropout)
        self.expr = _proj(n_genes, dim, dropout)
        self.temperature = temperature

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image and expression embeddings."""
        return F.normalize(self.image(x), dim=-1), F.normalize(self.expr(y), dim=-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return bleep_loss(*self(x, y), self.temperature)


def bleep_loss(img: torch.Tensor, expr: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BLEEP's symmetric contrastive loss with soft targets (cross-entropy both ways)."""
    logits = expr @ img.T / temperature
    with torch.no_grad():
        sim = (img @ img.T + expr @ expr.T) / 2
        targets = F.softmax(sim / temperature, dim=-1)
    # F.cross_entropy accepts class probabilities as targets (torch >= 1.10).
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2


@contextlib.contextmanager
def small_work_threads(module: nn.Module, batch_size: int):
    """One intra-op thread for tiny heads: on a shared CPU, thread hand-offs cost far more
    than the matrix products (a 12 -> 256 -> 23 MLP trains ~30x faster on one thread under
    load). Larger work keeps torch's setting. The previous setting is restored."""
    n_params = sum(p.numel() for p in module.parameters())
    before = torch.get_num_threads()
    small = n_params * batch_size < 50_000_000
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def state_to_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_numpy_state(module: nn.Module, state: dict[str, np.ndarray]) -> nn.Module:
    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return module.eval()


@torch.inference_mode()
def run(module_fn, arrays: list[np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Apply ``module_fn(*tensors)`` in batches and return a float32 numpy array."""
    n = len(arrays[0])
    outs = []
    for s in range(0, n, batch_size):
        ts = [torch.as_tensor(a[s : s + batch_size], dtype=torch.float32) for a in arrays]
        outs.append(module_fn(*ts).cpu().numpy())
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)
