"""``mmpath train expr``: expression heads trained by the shared training core.

Both entry points run the same task (:class:`ExprHeadTask`) through the one loop
(:func:`mmpath.train.fit`): :func:`mmpath.tl.fit_expression` trains its small torch heads in
memory (:func:`fit_in_memory`: ``fit(..., persist=False)``, a few seconds, and once per fold
inside :func:`mmpath.tl.evaluate_expression`); long runs (big tables, checkpoint/resume, DDP, a
metrics log) use the CLI:

.. code-block:: text

    mmpath train expr --config expr.yaml --set data.table=spots.h5ad \\
        --set data.genes=hvg:50 --set model.method=mlp --set train.epochs=50 --out runs/expr

The run's ``model/`` folder is an ordinary expression model folder: ``mm.tl.predict_expression``
and ``mmpath expr predict`` load it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from mmpath import _keys as K
from mmpath.errors import ConfigError
from mmpath.train.config import TrainConfig
from mmpath.train.core import LossOutput, SampleKey, TrainingTask
from mmpath.train.registry import register_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExprDataConfig:
    """Which table, targets and genomic vectors to train on."""

    table: str = ""  # spot table (.h5ad) with embeddings in obsm and counts in X
    genes: str = "hvg:50"
    use_rep: str | None = None
    genomic: str | None = None  # CSV of per-sample vectors (index = sample id)
    sample_key: str = K.SLIDE_ID
    layer: str | None = None


@dataclass(frozen=True)
class ExprHeadConfig:
    """The head: method, fusion and its sizes."""

    method: Literal["mlp", "contrastive"] = "mlp"
    fusion: Literal["concat", "gated"] | None = None
    hidden: int = 256
    dropout: float = 0.1
    dim: int = 128
    temperature: float = 0.1
    top_k: int = 50


@dataclass(frozen=True)
class ExprRunConfig:
    """Run config of ``mmpath train expr``."""

    out: str = "runs/expr"
    data: ExprDataConfig = field(default_factory=ExprDataConfig)
    model: ExprHeadConfig = field(default_factory=ExprHeadConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=50, batch_size=256, lr=1e-3, weight_decay=1e-4)
    )


class _Rows:
    """Standardised arrays as a training set; a whole batch is one fancy index."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [torch.as_tensor(a, dtype=torch.float32) for a in arrays]

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, key: SampleKey):
        return tuple(a[key.index] for a in self.arrays)

    def __getitems__(self, keys: list[SampleKey]):  # DataLoader's batched fetch
        idx = torch.as_tensor([k.index for k in keys])
        return tuple(a[idx] for a in self.arrays)


class ExprHeadTask(TrainingTask):
    """An expression head (MLP, gated fusion or BLEEP-style contrastive) on embeddings ``X``,
    targets ``Y`` and (fusion) genomic vectors ``G`` of an :class:`ExpressionModel`."""

    def __init__(self, model, X: np.ndarray, Y: np.ndarray, G: np.ndarray | None = None) -> None:
        self.model = model
        self.head, x, g, y = model.init_torch(X, Y, G)
        self._Y, self._y = Y, y
        self.module = self.head
        self.rows = _Rows([x, y] if g is None else [x, g, y])

    def train_dataset(self) -> _Rows:
        return self.rows

    def collate(self, items):
        return items  # _Rows.__getitems__ returns the batch

    def forward(self, module, batch):
        if self.model.method == "contrastive":
            x, y = batch
            return module(x, y)
        return module(*batch[:-1])

    def loss(self, output, batch) -> LossOutput:
        from mmpath.models.heads.expression import bleep_loss

        if self.model.method == "contrastive":
            return LossOutput(bleep_loss(*output, self.model.params["temperature"]))
        return LossOutput(F.mse_loss(output, batch[-1]))

    def finish(self) -> None:
        """Store the trained weights (and contrastive references) in the model's state."""
        self.model.finish_torch(self.head, self._Y, self._y)

    def export(self, folder: Path) -> None:
        self.finish()
        self.model.write_into(folder)


class ExprTask(ExprHeadTask):
    """:class:`ExprHeadTask` on a spot table (``mmpath train expr``)."""

    def __init__(self, cfg: ExprRunConfig, env) -> None:
        import pandas as pd

        from mmpath.io import read_h5ad
        from mmpath.tl.expression._api import _encoder_of, _inputs
        from mmpath.tl.expression._model import ExpressionModel, resolve_params

        if not cfg.data.table:
            raise ConfigError("set data.table to a spot table (.h5ad) with embeddings")
        d, m = cfg.data, cfg.model
        adata = read_h5ad(d.table)
        genomic = pd.read_csv(d.genomic, index_col=0) if d.genomic else None
        rep, X, Y, G, cols, genes, spec = _inputs(
            adata,
            genes=d.genes,
            use_rep=d.use_rep,
            genomic=genomic,
            fusion=m.fusion,
            sample_key=d.sample_key,
            layer=d.layer,
            normalize="auto",
            target_sum=1e4,
        )
        keys = (
            ("dim", "temperature", "top_k", "dropout")
            if m.method == "contrastive"
            else ("hidden", "dropout")
        )
        tc = cfg.train
        params = resolve_params(
            m.method,
            m.fusion,
            {
                **{k: getattr(m, k) for k in keys},
                "epochs": tc.epochs,
                "batch_size": tc.batch_size,
                "lr": tc.lr,
                "weight_decay": tc.weight_decay,
                "seed": tc.seed,
            },
        )
        model = ExpressionModel(
            method=m.method,
            genes=genes,
            use_rep=rep,
            encoder=_encoder_of(adata, rep),
            targets={**spec, "sample_key": d.sample_key},
            fusion=m.fusion,
            genomic_columns=cols,
            params=params,
        )
        super().__init__(model, X, Y, G)
        log.info("expr (%s): %d spots, %d genes from %s", m.method, len(X), len(genes), rep)


@dataclass(frozen=True)
class _InMemoryRun:
    out: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)


def fit_in_memory(model, X: np.ndarray, Y: np.ndarray, G: np.ndarray | None = None) -> list[float]:
    """Train ``model``'s torch head in this process through :func:`mmpath.train.fit`
    (``persist=False``) with ``model.params``; returns the per-epoch mean loss.

    AdamW with torch's default betas/eps and no gradient clipping (the settings these heads
    were tuned with); a batch larger than the table is the whole table.
    """
    from mmpath.models.heads.expression import small_work_threads
    from mmpath.train.core import fit

    p = model.params
    batch = max(1, min(int(p["batch_size"]), len(X)))
    tc = TrainConfig(
        epochs=int(p["epochs"]),
        batch_size=batch,
        lr=float(p["lr"]),
        weight_decay=float(p["weight_decay"]),
        betas=(0.9, 0.999),
        eps=1e-8,
        grad_clip=None,
        seed=int(p["seed"]),
        device="cpu",
        val_every_epochs=0,
        quiet=True,
    )
    task = ExprHeadTask(model, X, Y, G)
    with small_work_threads(task.module, batch):
        result = fit(task, _InMemoryRun(train=tc), persist=False)
    task.finish()
    per_epoch = max(1, len(X) // batch)
    losses = np.asarray(result.losses, np.float64)
    return [float(c.mean()) for c in np.array_split(losses, max(1, len(losses) // per_epoch))]


@register_task("expr", config=ExprRunConfig, help="image -> expression heads (mlp, contrastive)")
def build(cfg: ExprRunConfig, env) -> ExprTask:
    """Builder registered as ``expr``."""
    return ExprTask(cfg, env)
