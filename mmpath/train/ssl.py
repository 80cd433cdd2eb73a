"""Self-supervised pretraining of an image tower on unlabelled tiles (``mmpath train ssl``).

SimCLR-style (Chen et al., 2020): two heavily augmented views of every tile (random resized
crops, flips and 90° rotations, colour and HED stain jitter, blur, grayscale; see
:meth:`mmpath.train.augment.AugmentConfig.ssl`) go through the image tower and a 2-layer MLP
projection head; the loss is the symmetric InfoNCE between the two views at a fixed
temperature, with the other tiles' views as negatives, as in MoCo v3 / CLIP. It is computed
by open_clip's ``ClipLoss`` (with the constant scale ``1 / temperature``), so features are
gathered across processes exactly as for image-text training and no loss is re-implemented.
The head has no batch norm, so a run on N processes equals a run on one.

The exported model folder holds the image tower only (the projection head is dropped, as in
SimCLR): load it with ``create_encoder("local-dir:<out>/model")``.

Validation, on fixed augmented views of held-out tiles: ``view_loss``, the InfoNCE of view 1
against view 2 of all held-out tiles at once, and ``view_top1``, how often a view's nearest
neighbour among the other views is its own twin (chance = 1 / (2n - 1)).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpath.errors import ConfigError
from mmpath.train.augment import AugmentConfig
from mmpath.train.config import TrainConfig
from mmpath.train.core import LossOutput, SampleKey, TrainingTask
from mmpath.train.data import ImageDataset, TableConfig, export_stain, load_table, split_rows
from mmpath.train.dist import DistEnv
from mmpath.train.registry import register_task

log = logging.getLogger(__name__)

__all__ = ["SslModelConfig", "SslDataConfig", "SslLossConfig", "SslRunConfig", "SslTask"]

_VAL_EPOCH = 1_000_003  # augmentation "epoch" of the fixed validation views


@dataclass(frozen=True)
class SslModelConfig:
    """The image tower to pretrain and its (discarded) projection head."""

    # An image encoder: mmpath-demo-vit, timm:<arch>, local-dir:/path ... By default the
    # shipped demo ViT is pretrained further on the user's tiles; `pretrained: false` starts
    # from random init (what tools/make_demo_models.py does).
    name: str = "mmpath-demo-vit"
    pretrained: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    head_hidden: int = 512
    head_dim: int = 128
    save_name: str | None = None  # name stored in the model folder (its X_<slug> key)


@dataclass(frozen=True)
class SslLossConfig:
    temperature: float = 0.1
    local_loss: bool = True
    gather_with_grad: bool = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("loss.temperature must be > 0")


@dataclass(frozen=True)
class SslDataConfig(TableConfig):
    """:class:`~mmpath.train.data.TableConfig` with heavy SSL views by default."""

    val_fraction: float = 0.05
    augment: AugmentConfig = field(default_factory=AugmentConfig.ssl)


@dataclass(frozen=True)
class SslRunConfig:
    """``mmpath train ssl`` run config (``configs/ssl-tiny.yaml``)."""

    out: str = "runs/ssl"
    model: SslModelConfig = field(default_factory=SslModelConfig)
    data: SslDataConfig = field(default_factory=SslDataConfig)
    loss: SslLossConfig = field(default_factory=SslLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class _SslModule(nn.Module):
    def __init__(self, encoder: nn.Module, hidden: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(encoder.info.embed_dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        v1, v2 = batch
        feats = self.encoder.encode_image(torch.cat([v1, v2])).features
        z = F.normalize(self.head(feats), dim=-1)
        return z[: len(v1)], z[len(v1) :]


class SslTask(TrainingTask):
    """SimCLR-style pretraining; see the module docstring."""

    def __init__(self, cfg: SslRunConfig, env: DistEnv) -> None:
        from open_clip.loss import ClipLoss

        from mmpath.models import create_encoder

        self.cfg = cfg
        encoder = create_encoder(
            cfg.model.name, pretrained=cfg.model.pretrained, **cfg.model.kwargs
        )
        if not encoder.info.has_image:
            raise ConfigError(f"{encoder.info.name!r} has no image tower to pretrain")
        encoder.requires_grad_(True)
        data = encoder.info.data
        if cfg.data.input_size and cfg.data.input_size != data.input_size:
            data = replace(data, input_size=cfg.data.input_size)
            encoder.info = replace(encoder.info, data=data)
        self.encoder = encoder
        self.module = _SslModule(encoder, cfg.model.head_hidden, cfg.model.head_dim)
        self.criterion = ClipLoss(
            local_loss=cfg.loss.local_loss,
            gather_with_grad=cfg.loss.gather_with_grad,
            cache_labels=True,
            rank=env.rank,
            world_size=env.world_size,
        )
        self.scale = 1.0 / cfg.loss.temperature
        table = load_table(cfg.data.train, cfg.data, captions=False)
        self.table = table  # its fitted stain target goes into the model folder
        if cfg.data.val:
            val_table = load_table(cfg.data.val, cfg.data, captions=False)
            train_rows, val_rows = np.arange(len(table)), np.arange(len(val_table))
        else:
            val_table = table
            train_rows, val_rows = split_rows(len(table), cfg.data.val_fraction, cfg.train.seed)
        common = dict(
            size=data.input_size,
            mean=data.mean,
            std=data.std,
            seed=cfg.train.seed,
            augment=cfg.data.augment,
            views=2,
            with_captions=False,
        )
        self.train_set = ImageDataset(table, train_rows, **common)
        self.val_set = ImageDataset(val_table, val_rows, **common)
        log.info(
            "ssl: %s, %d train / %d val tiles",
            encoder.info.name,
            len(self.train_set),
            len(self.val_set),
        )

    def train_dataset(self) -> ImageDataset:
        return self.train_set

    def loss(self, output: tuple[torch.Tensor, torch.Tensor], batch: Any) -> LossOutput:
        z1, z2 = output
        scale = torch.tensor(self.scale, device=z1.device, dtype=z1.dtype)
        return LossOutput(self.criterion(z1, z2, scale), {})

    def evaluate(self, epoch: int) -> dict[str, float]:
        n = len(self.val_set)
        if n < 2:
            return {}
        device = next(self.module.parameters()).device
        z1, z2 = [], []
        for start in range(0, n, 128):
            views = [
                self.val_set[SampleKey(i, _VAL_EPOCH)] for i in range(start, min(n, start + 128))
            ]
            a = torch.stack([v[0] for v in views]).to(device)
            b = torch.stack([v[1] for v in views]).to(device)
            za, zb = self.module((a, b))
            z1.append(za.float())
            z2.append(zb.float())
        a, b = torch.cat(z1), torch.cat(z2)
        scale = torch.tensor(self.scale, device=device)
        view_loss = F.cross_entropy(scale * a @ b.T, torch.arange(n, device=device))
        z = torch.cat([a, b])
        sim = z @ z.T
        sim.fill_diagonal_(-float("inf"))
        twin = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(device)
        top1 = (sim.argmax(dim=1) == twin).float().mean().item()
        return {"view_loss": view_loss.item(), "view_top1": top1}

    def export(self, folder: Path) -> None:
        from mmpath.models import save_encoder

        save_encoder(self.encoder, folder, name=self.cfg.model.save_name)
        export_stain(self.table, folder)


@register_task("ssl", config=SslRunConfig, help="self-supervised image pretraining (SimCLR)")
def build(cfg: SslRunConfig, env: DistEnv) -> SslTask:
    """Builder registered as ``ssl``."""
    return SslTask(cfg, env)
