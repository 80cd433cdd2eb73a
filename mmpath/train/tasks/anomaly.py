"""The anomaly head as a training task: ``mmpath train anomaly``.

It plugs into the one loop (:func:`mmpath.train.fit`) like every task.

* ``anomaly``: a VAE head (:class:`~mmpath.models.heads.VAEHead`) trained on normal tiles
  only, loss recon + beta * KL. Data: synthetic normal tiles, or tile tables / image folders
  of normal tissue (read by :func:`mmpath.train.data.load_table`). At export the joint
  distribution of (reconstruction error, PNG complexity) over the normal training tiles is
  fitted and stored in the model folder (``config.yaml`` ``extra.complexity``): it is what the
  default, complexity-aware score needs (:mod:`mmpath.models.heads._complexity`). Validation reports
  the reconstruction error, and AUROC of the default score and of the raw error when the
  synthetic source adds anomalous held-out tiles.

The model folder (``<out>/model``) is what :func:`mmpath.models.heads.load_trained_head`
reads: ``config.yaml`` (``format: mmpath-head``) + ``model.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mmpath.models.transform import to_tensor
from mmpath.train.config import TrainConfig
from mmpath.train.core import LossOutput, TrainingTask
from mmpath.train.dist import DistEnv
from mmpath.train.registry import register_task

log = logging.getLogger(__name__)

__all__ = [
    "AnomalyDataConfig",
    "AnomalyModelConfig",
    "AnomalyRunConfig",
    "AnomalyTask",
]


# -- anomaly (VAE) --------------------------------------------------------------------------
@dataclass(frozen=True)
class AnomalyDataConfig:
    """Normal tiles to train on."""

    source: Literal["synthetic", "tiles"] = "synthetic"
    train: tuple[str, ...] = ()  # tiles: tile tables (.h5ad), image tables or image folders
    synthetic_n: int = 128
    val_n: int = 64  # synthetic held-out tiles, half of them anomalous (for val AUROC)
    flips: bool = True


@dataclass(frozen=True)
class AnomalyModelConfig:
    image_size: int = 32
    latent_dim: int = 16
    base_channels: int = 16
    beta: float = 1.0
    encoder: Literal["conv", "backbone"] = "conv"
    backbone: str = "mmpath-demo-vit"  # the shared encoder when encoder == "backbone"


@dataclass(frozen=True)
class AnomalyRunConfig:
    """``mmpath train anomaly`` run config (``configs/vae-tiny.yaml``)."""

    out: str = "runs/vae1"
    data: AnomalyDataConfig = field(default_factory=AnomalyDataConfig)
    model: AnomalyModelConfig = field(default_factory=AnomalyModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class _TileDataset:
    """``[0, 1]`` image tensors of side S, with seeded dihedral flips."""

    def __init__(self, read, n: int, size: int, *, seed: int, flips: bool) -> None:
        self.read, self.n, self.size, self.seed, self.flips = read, n, size, seed, flips

    def __len__(self) -> int:
        return self.n

    def image(self, i: int, rng: np.random.Generator | None) -> torch.Tensor:
        from PIL import Image

        img = np.asarray(self.read(i))
        if img.shape[0] != self.size or img.shape[1] != self.size:
            img = np.asarray(
                Image.fromarray(img).resize((self.size, self.size), Image.Resampling.BILINEAR)
            )
        if rng is not None and self.flips:
            img = np.rot90(img, int(rng.integers(4)))
            if rng.random() < 0.5:
                img = img[:, ::-1]
        return to_tensor(img)  # the VAE reads [0, 1] images (no mean/std)

    def __getitem__(self, key):
        from mmpath.train.augment import sample_rng

        return (self.image(int(key[0]), sample_rng(self.seed, int(key[1]), int(key[0]))),)


class AnomalyTask(TrainingTask):
    """VAE on normal tiles, recon + beta * KL."""

    def __init__(self, cfg: AnomalyRunConfig, env: DistEnv) -> None:
        from mmpath.datasets.synthetic_seg import make_anomaly_tiles
        from mmpath.models.factory import create_encoder
        from mmpath.models.heads import VAEHead

        self.cfg = cfg
        m, S, seed = cfg.model, cfg.model.image_size, cfg.train.seed
        backbone = create_encoder(m.backbone) if m.encoder == "backbone" else None
        kwargs = {k: v for k, v in asdict(m).items() if k != "backbone"}
        self.module = VAEHead(backbone=backbone, **kwargs)
        self.val_images = self.val_labels = None
        if cfg.data.source == "synthetic":
            imgs, _ = make_anomaly_tiles(cfg.data.synthetic_n, S, seed=seed)
            self.val_images, self.val_labels = make_anomaly_tiles(
                cfg.data.val_n, S, anomalous=0.5, seed=seed + 10_000
            )
            read, n = (lambda i: imgs[i]), len(imgs)
        else:
            from mmpath.train.data import TableConfig, load_table

            table = load_table(cfg.data.train, TableConfig(tile_size=S), captions=False)
            read, n = table.read, len(table)
        self.train_set = _TileDataset(read, n, S, seed=seed, flips=cfg.data.flips)

    def train_dataset(self):
        return self.train_set

    def forward(self, module, batch):
        return module(batch[0])

    def loss(self, output, batch) -> LossOutput:
        out = self.module.loss(batch[0], output)
        return LossOutput(out.total, {"recon": out.recon.detach(), "kl": out.kl.detach()})

    def calibrate(self, max_tiles: int = 2048):
        """Fit the (recon error, complexity) calibration on normal training tiles."""
        from mmpath.models.heads._complexity import ComplexityCalibration, vae_scores

        n = len(self.train_set)
        idx = np.arange(n)
        if n > max_tiles:
            idx = np.sort(np.random.default_rng(self.cfg.train.seed).choice(n, max_tiles, False))
        device = next(self.module.parameters()).device
        err, cplx = [], []
        was_training = self.module.training
        self.module.eval()
        for i in range(0, len(idx), 64):
            x = torch.stack([self.train_set.image(int(j), None) for j in idx[i : i + 64]])
            res = vae_scores(self.module, x.to(device), None)
            err.append(res["recon_error"])
            cplx.append(res["complexity"])
        self.module.train(was_training)
        return ComplexityCalibration.fit(np.concatenate(err), np.concatenate(cplx))

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.val_images is None:
            return {}
        from mmpath.metrics import anomaly_metrics
        from mmpath.models.heads._complexity import vae_scores

        device = next(self.module.parameters()).device
        x = to_tensor(self.val_images)
        scores = vae_scores(self.module, x.to(device), self.calibrate())
        res = anomaly_metrics(scores["typicality"], self.val_labels)
        raw = scores["recon_error"]
        return {
            "auroc": res["auroc"],
            "auprc": res["auprc"],
            "auroc_recon_error": anomaly_metrics(raw, self.val_labels)["auroc"],
            "recon_error_normal": float(raw[~self.val_labels].mean()),
        }

    def export(self, folder: Path) -> None:
        from mmpath.models.heads import TrainedHead, save_trained_head

        cal = self.calibrate()
        save_trained_head(
            TrainedHead(
                "anomaly",
                self.module,
                (),
                self.cfg.model.image_size,
                extra={"complexity": cal.to_dict()},
            ),
            folder,
        )


@register_task("anomaly", config=AnomalyRunConfig, help="VAE anomaly head on normal tiles")
def build_anomaly(cfg: AnomalyRunConfig, env: DistEnv) -> AnomalyTask:
    return AnomalyTask(cfg, env)
