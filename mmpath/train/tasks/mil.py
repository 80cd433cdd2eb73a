"""Slide-level learning: ``mmpath train mil`` (ABMIL, TransMIL, pooled MLP on tile embeddings).

Runs through the one loop (:func:`mmpath.train.fit`): each cross-validation fold and the final
model are one ``fit`` each (``<out>/fold<k>/`` and ``<out>/``), with the loop's checkpoints and
exact resume. A sample is a bag of tile embeddings read from an on-disk bag cache
(:mod:`mmpath.io.bags`); in training, bags larger than ``data.max_tiles`` are subsampled
(seeded per sample and epoch, so a resumed run replays the same bags), at inference every tile
counts. Tasks: classification (cross-entropy, class weights ``balanced`` by default),
regression (MSE on the standardised target) and survival (Cox partial likelihood; needs
``train.batch_size >= 2``: a batch is the risk set).

Defaults follow the anchors (CLAM, STAMP): AdamW lr 2e-4 (betas 0.9/0.999), weight decay 1e-5,
dropout 0.25,
1024 tiles per training bag, batch of one bag (survival: 16).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from mmpath import _keys as K
from mmpath.models.heads.mil import logits_to_outputs
from mmpath.train.config import TrainConfig
from mmpath.train.core import LossOutput, TrainingTask
from mmpath.train.dist import DistEnv
from mmpath.train.registry import register_task
from mmpath.train.tasks._mil_data import MILData, check_survival_batch, prepare_mil_data

log = logging.getLogger(__name__)

__all__ = [
    "MILDataConfig",
    "MILModelConfig",
    "MILCVConfig",
    "MILTrainConfig",
    "MILRunConfig",
    "MILTask",
    "MILBatch",
]


@dataclass(frozen=True)
class MILDataConfig:
    """Where bags and labels come from."""

    tables: tuple[str, ...] = ()  # tile tables: .h5ad files, globs or folders (an archive)
    labels: str = ""  # CSV/TSV/parquet: one row per slide (patient labels repeated per slide)
    use_rep: str = ""  # obsm key of the tile embeddings, e.g. X_uni
    task: Literal["classification", "regression", "survival"] = "classification"
    label: str = "label"  # classification / regression column
    time: str = "time"  # survival columns
    event: str = "event"
    slide_col: str = K.SLIDE_ID
    patient_col: str = K.PATIENT_ID  # used when present: folds never split a patient
    level: Literal["auto", "slide", "patient"] = "auto"  # patient: pool a patient's slides
    classes: tuple[str, ...] = ()  # class order (default: sorted)
    class_weights: Literal["balanced", "none"] = "balanced"
    max_tiles: int = 1024  # tiles sampled per bag in training (0: all)
    unlabelled: Literal["error", "skip"] = "error"  # slides in the tables without a label
    cache: str = ""  # bag cache folder (default <out>/bags)


@dataclass(frozen=True)
class MILModelConfig:
    """The MIL head (see :mod:`mmpath.models.heads.mil`)."""

    head: Literal["abmil", "transmil", "mean-mlp", "max-mlp"] = "abmil"
    hidden: int = 256
    att_dim: int = 128
    dropout: float = 0.25
    gated: bool = True
    n_layers: int = 2
    n_heads: int = 4


@dataclass(frozen=True)
class MILCVConfig:
    """Cross-validation: ``folds`` patient-grouped folds, then a final model on everything."""

    folds: int = 5  # 0 or 1: no cross-validation
    final: bool = True  # train <out>/model on every sample after the folds
    seed: int = 0


@dataclass(frozen=True)
class MILTrainConfig(TrainConfig):
    """:class:`TrainConfig` with the MIL anchors' defaults."""

    epochs: int = 20
    batch_size: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's defaults, as CLAM
    eps: float = 1e-8
    log_every_steps: int = 50
    val_every_epochs: int = 0


@dataclass(frozen=True)
class MILRunConfig:
    """``mmpath train mil`` run config (``configs/mil-abmil.yaml``)."""

    out: str = "runs/mil1"
    data: MILDataConfig = field(default_factory=MILDataConfig)
    model: MILModelConfig = field(default_factory=MILModelConfig)
    cv: MILCVConfig = field(default_factory=MILCVConfig)
    train: MILTrainConfig = field(default_factory=MILTrainConfig)


class MILBatch(NamedTuple):
    """Padded bags ``x (B, N, D)``, ``mask (B, N)`` and targets."""

    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    event: torch.Tensor


class _BagDataset:
    """One sample per :class:`SampleKey`: its bag, subsampled to ``max_tiles`` (seeded)."""

    def __init__(
        self, data: MILData, rows: np.ndarray, y: np.ndarray, *, max_tiles: int, seed: int
    ):
        self.data, self.rows, self.y = data, np.asarray(rows), y
        self.max_tiles, self.seed = max_tiles, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> tuple[torch.Tensor, Any, int]:
        from mmpath.train.augment import sample_rng

        i, epoch = int(key[0]), int(key[1])
        r = int(self.rows[i])
        bag = self.data.bag(r)
        if self.max_tiles and len(bag) > self.max_tiles:
            rng = sample_rng(self.seed, epoch, i)
            pick = np.sort(rng.choice(len(bag), self.max_tiles, replace=False))
            bag = bag[pick]
        event = int(self.data.event[r]) if self.data.event is not None else 0
        return torch.from_numpy(np.array(bag, dtype=np.float32)), self.y[r], event


def collate_bags(items: list) -> MILBatch:
    """Pad bags to the longest one; ``mask`` marks real tiles."""
    n = max(len(b) for b, _, _ in items)
    d = items[0][0].shape[1]
    x = torch.zeros(len(items), n, d)
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for i, (b, _, _) in enumerate(items):
        x[i, : len(b)] = b
        mask[i, : len(b)] = True
    y = torch.as_tensor(np.asarray([t for _, t, _ in items]))
    event = torch.as_tensor([e for _, _, e in items], dtype=torch.long)
    return MILBatch(x, mask, y, event)


class MILTask(TrainingTask):
    """A MIL head on ``data`` rows ``train_rows`` (validated on ``val_rows`` if given)."""

    def __init__(
        self,
        cfg: MILRunConfig,
        env: DistEnv,
        data: MILData | None = None,
        *,
        train_rows: np.ndarray | None = None,
        val_rows: np.ndarray | None = None,
    ) -> None:
        from mmpath.models.heads.mil import MILConfig, MILHead

        self.cfg = cfg
        self.data = data if data is not None else prepare_mil_data(cfg)
        d = cfg.data
        check_survival_batch(d.task, cfg.train.batch_size)
        n = len(self.data)
        self.train_rows = np.arange(n) if train_rows is None else np.asarray(train_rows)
        self.val_rows = np.asarray([] if val_rows is None else val_rows, dtype=int)
        y = self.data.y
        self.y_mean, self.y_std = 0.0, 1.0
        if d.task == "regression":
            ty = y[self.train_rows].astype(float)
            self.y_mean, self.y_std = float(ty.mean()), float(ty.std() or 1.0)
            target = ((y - self.y_mean) / self.y_std).astype(np.float32)
        elif d.task == "survival":
            target = y.astype(np.float32)
        else:
            target = y
        self.n_out = len(self.data.classes) if d.task == "classification" else 1
        self.weights = None
        if d.task == "classification" and d.class_weights == "balanced":
            counts = np.bincount(y[self.train_rows], minlength=self.n_out).astype(float)
            w = np.where(counts > 0, counts.sum() / (self.n_out * np.maximum(counts, 1)), 0.0)
            self.weights = torch.tensor(w, dtype=torch.float32)
        m = cfg.model
        self.head_config = MILConfig(
            kind=m.head,
            in_dim=self.data.store.dim,
            n_outputs=self.n_out,
            hidden=m.hidden,
            att_dim=m.att_dim,
            dropout=m.dropout,
            gated=m.gated,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
        )
        self.module = MILHead(self.head_config)
        self.train_set = _BagDataset(
            self.data, self.train_rows, target, max_tiles=d.max_tiles, seed=cfg.train.seed
        )

    def train_dataset(self):
        return self.train_set

    def collate(self, items):
        return collate_bags(items)

    def forward(self, module, batch: MILBatch):
        return module(batch.x, batch.mask).logits

    def loss(self, output, batch: MILBatch) -> LossOutput:
        from mmpath.models.heads.mil import cox_loss

        task = self.cfg.data.task
        if task == "classification":
            w = self.weights.to(output.device) if self.weights is not None else None
            return LossOutput(torch.nn.functional.cross_entropy(output, batch.y.long(), weight=w))
        if task == "regression":
            return LossOutput(torch.nn.functional.mse_loss(output[:, 0], batch.y.float()))
        return LossOutput(cox_loss(output[:, 0], batch.y, batch.event))

    @torch.no_grad()
    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """Outputs for samples ``rows`` on all their tiles: probabilities ``(n, K)``,
        values (regression, original units) or risks (survival) ``(n,)``."""
        module = self.module
        was = module.training
        module.eval()
        device = next(module.parameters()).device
        out = []
        for r in rows:
            x = torch.from_numpy(np.array(self.data.bag(int(r)), dtype=np.float32)).to(device)
            out.append(module(x[None]).logits[0].float().cpu())
        module.train(was)
        logits = torch.stack(out) if out else torch.zeros(0, self.n_out)
        return logits_to_outputs(logits, self.cfg.data.task, self.y_mean, self.y_std)

    def evaluate(self, epoch: int) -> dict[str, float]:
        if not len(self.val_rows):
            return {}
        from mmpath.train.tasks.mil_report import score_rows

        return score_rows(self, self.val_rows, self.predict_rows(self.val_rows))

    def export(self, folder: Path) -> None:
        from mmpath.models.heads import TrainedHead, save_trained_head

        d = self.cfg.data
        extra = {
            "task": d.task,
            "use_rep": d.use_rep,
            "encoder": self.data.store.encoder,
            "in_dim": self.data.store.dim,
            "level": self.data.level,
            "label": d.label if d.task != "survival" else None,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
            "n_train": int(len(self.train_rows)),
        }
        save_trained_head(
            TrainedHead("mil", self.module, self.data.classes, 0, extra=extra), folder
        )


def _run(cfg: MILRunConfig, *, resume: bool = False, on_step=None):
    from mmpath.train.tasks.mil_report import run_mil

    return run_mil(cfg, resume=resume, on_step=on_step)


@register_task(
    "mil",
    config=MILRunConfig,
    help="slide-level MIL head (ABMIL, TransMIL, pooled MLP) on tile embeddings, k-fold CV",
    run=_run,
)
def build_mil(cfg: MILRunConfig, env: DistEnv) -> MILTask:
    """The final model's task: every labelled sample (used by :func:`mmpath.train.fit`)."""
    return MILTask(cfg, env)
