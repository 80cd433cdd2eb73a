"""Segmentation and anomaly heads as training tasks: ``mmpath train seg`` / ``train anomaly``.

Both plug into the one loop (:func:`mmpath.train.fit`): checkpoints, resume, DDP and the
cosine schedule come from there; this module only says what the data, module, loss and model
folder are.

* ``seg``: a U-Net head (:class:`~mmpath.models.heads.UNetHead`) on a registry encoder, loss
  Dice + CE, validation Dice/Jaccard per class. Data: synthetic images with known masks
  (``data.source: synthetic``) or image + mask pairs (``data.source: pairs``, an ``.npz`` or
  an ``images/`` + ``masks/`` folder; see :mod:`mmpath.datasets.seg_pairs`). Images larger
  than ``data.tile_size`` are randomly cropped (seeded per sample); flips and 90° rotations
  apply to image and mask together.
* ``anomaly``: a VAE head (:class:`~mmpath.models.heads.VAEHead`) trained on normal tiles
  only, loss recon + beta * KL. Data: synthetic normal tiles, or tile tables / image folders
  of normal tissue (read by :func:`mmpath.train.data.load_table`). Validation reports the
  reconstruction error, and AUROC when the synthetic source adds anomalous held-out tiles.

The model folder (``<out>/model``) is what :func:`mmpath.models.heads.load_trained_head`
reads: ``head.yaml`` + ``model.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mmpath.errors import ConfigError, DataError
from mmpath.train.config import TrainConfig
from mmpath.train.core import LossOutput, TrainingTask
from mmpath.train.dist import DistEnv
from mmpath.train.registry import register_task

log = logging.getLogger(__name__)

__all__ = [
    "SegDataConfig",
    "SegModelConfig",
    "SegLossConfig",
    "SegRunConfig",
    "SegTask",
    "AnomalyDataConfig",
    "AnomalyModelConfig",
    "AnomalyRunConfig",
    "AnomalyTask",
]


# -- segmentation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SegDataConfig:
    """Where image + mask pairs come from."""

    source: Literal["synthetic", "pairs", "annotations"] = "synthetic"
    train: str = ""  # pairs: an .npz or a folder with images/ and masks/
    slides: tuple[str, ...] = ()  # annotations: slide files ...
    annotations: tuple[str, ...] = ()  # ... and their QuPath GeoJSON / ASAP XML, in order
    mpp: float | None = None  # annotations: µm/px to cut tiles at (None: level 0)
    min_annotated: float = 0.0  # annotations: keep tiles at least this annotated
    val: str = ""  # pairs: held-out pairs; empty: split val_fraction off train
    val_fraction: float = 0.2
    synthetic_kind: Literal["colour", "texture", "multiclass"] = "texture"
    synthetic_n: int = 96
    class_names: tuple[str, ...] = ()  # default: from the synthetic kind, or "0", "1", ...
    num_classes: int = 2  # pairs only (synthetic: from the kind)
    tile_size: int = 32
    ignore_index: int | None = None
    flips: bool = True


@dataclass(frozen=True)
class SegModelConfig:
    """The encoder and the U-Net head on it."""

    encoder: str = "mmpath-demo-vit"  # the shipped SSL demo ViT; set a foundation model here
    pretrained: bool = True  # load the encoder's weights (random-by-design entries ignore it)
    binary: bool = False  # one sigmoid logit instead of two softmax classes (2 classes only)
    indices: int | tuple[int, ...] = 4
    decoder_channels: int = 8
    stem_channels: int = 8
    finetune: Literal["frozen", "partial", "full"] = "frozen"
    unfreeze_last: int = 1
    mpp: float | None = None  # µm/px of the training data; default: the encoder's


@dataclass(frozen=True)
class SegLossConfig:
    dice_weight: float = 1.0
    ce_weight: float = 1.0


@dataclass(frozen=True)
class SegRunConfig:
    """``mmpath train seg`` run config (``configs/seg-tiny.yaml``)."""

    out: str = "runs/seg1"
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _seg_data(cfg: SegDataConfig, seed: int):
    """``(train_images, train_masks, val_images, val_masks, class_names)``."""
    from mmpath.datasets.seg_pairs import check_pairs, load_seg_pairs
    from mmpath.datasets.synthetic_seg import make_seg_images

    if cfg.source == "synthetic":
        n_val = max(1, int(round(cfg.synthetic_n * cfg.val_fraction)))
        tr = make_seg_images(cfg.synthetic_n, cfg.tile_size, kind=cfg.synthetic_kind, seed=seed)
        va = make_seg_images(n_val, cfg.tile_size, kind=cfg.synthetic_kind, seed=seed + 10_000)
        names = cfg.class_names or tr.class_names
        if len(names) != len(tr.class_names):
            raise ConfigError(f"data.class_names: {len(tr.class_names)} classes, got {names}")
        return list(tr.images), list(tr.masks), list(va.images), list(va.masks), tuple(names)
    if cfg.source == "annotations":
        return _annotation_data(cfg, seed)
    if not cfg.train:
        raise ConfigError("data.train: give an .npz or a folder with images/ and masks/")
    names = tuple(cfg.class_names) or tuple(str(c) for c in range(cfg.num_classes))
    if len(names) != cfg.num_classes:
        raise ConfigError(f"data.class_names has {len(names)} names for {cfg.num_classes} classes")
    tr = load_seg_pairs(cfg.train, cfg.num_classes, ignore_index=cfg.ignore_index)
    if cfg.val:
        va = load_seg_pairs(cfg.val, cfg.num_classes, ignore_index=cfg.ignore_index)
        vi, vm = va.images, va.masks
        ti, tm = tr.images, tr.masks
    else:
        order = np.random.default_rng(seed).permutation(len(tr.images))
        n_val = int(round(len(order) * cfg.val_fraction))
        ti = [tr.images[i] for i in order[n_val:]]
        tm = [tr.masks[i] for i in order[n_val:]]
        vi = [tr.images[i] for i in order[:n_val]]
        vm = [tr.masks[i] for i in order[:n_val]]
    for img in ti + vi:
        if min(img.shape[:2]) < cfg.tile_size:
            raise DataError(
                f"an image is {img.shape[1]}x{img.shape[0]} px, smaller than data.tile_size="
                f"{cfg.tile_size}; lower data.tile_size"
            )
    check_pairs(ti, tm, len(names), ignore_index=cfg.ignore_index)
    return ti, tm, vi, vm, names


def _annotation_data(cfg: SegDataConfig, seed: int):
    from mmpath.datasets.seg_pairs import pairs_from_annotations
    from mmpath.io import open_slide

    if not cfg.slides or len(cfg.slides) != len(cfg.annotations):
        raise ConfigError(
            "data.slides and data.annotations must list one annotation file per slide"
        )
    images, masks, names = [], [], None
    for slide_path, ann_path in zip(cfg.slides, cfg.annotations, strict=True):
        with open_slide(slide_path) as slide:
            pairs, found = pairs_from_annotations(
                slide,
                ann_path,
                tile_size=cfg.tile_size,
                mpp=cfg.mpp,
                labels=list(cfg.class_names[1:]) or None,
                min_annotated=cfg.min_annotated,
            )
        if names is not None and found != names:
            raise DataError(
                f"{ann_path!r} has labels {found[1:]}, others have {names[1:]}; set "
                "data.class_names to fix the label order"
            )
        names = found
        images += pairs.images
        masks += pairs.masks
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(len(order) * cfg.val_fraction))
    tr, va = order[n_val:], order[:n_val]
    return (
        [images[i] for i in tr],
        [masks[i] for i in tr],
        [images[i] for i in va],
        [masks[i] for i in va],
        tuple(names),
    )


class _PairDataset:
    """(image tensor, mask tensor) per SampleKey: seeded crop + dihedral transform."""

    def __init__(self, images, masks, size: int, mean, std, *, seed: int, flips: bool):
        self.images, self.masks, self.size = images, masks, size
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.seed, self.flips = seed, flips

    def __len__(self) -> int:
        return len(self.images)

    def item(self, i: int, rng: np.random.Generator | None):
        img, m = self.images[i], self.masks[i]
        H, W = m.shape
        S = self.size
        y = int(rng.integers(0, H - S + 1)) if rng is not None else (H - S) // 2
        x = int(rng.integers(0, W - S + 1)) if rng is not None else (W - S) // 2
        img, m = img[y : y + S, x : x + S], m[y : y + S, x : x + S]
        if rng is not None and self.flips:
            k = int(rng.integers(4))
            img, m = np.rot90(img, k), np.rot90(m, k)
            if rng.random() < 0.5:
                img, m = img[:, ::-1], m[:, ::-1]
        x_t = np.ascontiguousarray(img).transpose(2, 0, 1).astype(np.float32) / 255 - self.mean
        x_t = x_t / self.std
        return torch.from_numpy(x_t), torch.from_numpy(np.ascontiguousarray(m).astype(np.int64))

    def __getitem__(self, key):
        from mmpath.train.augment import sample_rng

        return self.item(int(key[0]), sample_rng(self.seed, int(key[1]), int(key[0])))


class SegTask(TrainingTask):
    """U-Net on a shared encoder, Dice + CE."""

    def __init__(self, cfg: SegRunConfig, env: DistEnv) -> None:
        from mmpath.models.heads import DiceCELoss, UNetHead
        from mmpath.models.registry import create_encoder

        self.cfg = cfg
        ti, tm, vi, vm, names = _seg_data(cfg.data, cfg.train.seed)
        self.class_names = names
        if cfg.model.binary and len(names) != 2:
            raise ConfigError("model.binary needs exactly 2 classes")
        encoder = create_encoder(cfg.model.encoder, pretrained=cfg.model.pretrained)
        info = encoder.info
        self.mean, self.std = tuple(info.data.mean), tuple(info.data.std)
        self.mpp = cfg.model.mpp if cfg.model.mpp is not None else info.data.mpp
        self.module = UNetHead(
            encoder,
            num_classes=1 if cfg.model.binary else len(names),
            indices=cfg.model.indices,
            decoder_channels=cfg.model.decoder_channels,
            stem_channels=cfg.model.stem_channels,
            finetune=cfg.model.finetune,
            unfreeze_last=cfg.model.unfreeze_last,
            input_size=cfg.data.tile_size,
        )
        self.find_unused_parameters = cfg.model.finetune != "full"
        self.loss_fn = DiceCELoss(
            dice_weight=cfg.loss.dice_weight,
            ce_weight=cfg.loss.ce_weight,
            ignore_index=cfg.data.ignore_index,
        )
        S, seed = cfg.data.tile_size, cfg.train.seed
        self.train_set = _PairDataset(
            ti, tm, S, self.mean, self.std, seed=seed, flips=cfg.data.flips
        )
        self.val_set = _PairDataset(vi, vm, S, self.mean, self.std, seed=seed, flips=False)

    def train_dataset(self):
        return self.train_set

    def forward(self, module, batch):
        return module(batch[0])

    def loss(self, output, batch) -> LossOutput:
        out = self.loss_fn(output, batch[1])
        return LossOutput(out.total, {"ce": out.ce.detach(), "dice": out.dice.detach()})

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """Label masks for normalised images (eval mode)."""
        with torch.no_grad():
            return self.module.predict_proba(images).argmax(1).cpu().numpy().astype(np.uint8)

    def evaluate(self, epoch: int) -> dict[str, float]:
        from mmpath.tl.seg_metrics import dice_jaccard

        if not len(self.val_set):
            return {}
        device = next(self.module.parameters()).device
        preds, targets = [], []
        for i in range(0, len(self.val_set), 16):
            items = [self.val_set.item(j, None) for j in range(i, min(i + 16, len(self.val_set)))]
            x = torch.stack([a for a, _ in items]).to(device)
            preds += list(self.predict(x))
            targets += [b.numpy() for _, b in items]
        table = dice_jaccard(
            preds,
            targets,
            len(self.class_names),
            class_names=self.class_names,
            ignore_index=self.cfg.data.ignore_index,
        )
        out = {
            "dice": float(table.loc["mean", "dice"]),
            "jaccard": float(table.loc["mean", "jaccard"]),
        }
        for name in self.class_names:
            out[f"dice_{name}"] = float(table.loc[name, "dice"])
        return out

    def export(self, folder: Path) -> None:
        from mmpath.models.heads import TrainedHead, save_trained_head

        save_trained_head(
            TrainedHead(
                "seg",
                self.module,
                self.class_names,
                self.cfg.data.tile_size,
                self.mpp,
                self.mean,
                self.std,
                extra={"encoder_name": self.cfg.model.encoder},
            ),
            folder,
        )


@register_task("seg", config=SegRunConfig, help="U-Net segmentation head on a shared encoder")
def build_seg(cfg: SegRunConfig, env: DistEnv) -> SegTask:
    return SegTask(cfg, env)


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
        return torch.from_numpy(
            np.ascontiguousarray(img).transpose(2, 0, 1).astype(np.float32) / 255
        )

    def __getitem__(self, key):
        from mmpath.train.augment import sample_rng

        return (self.image(int(key[0]), sample_rng(self.seed, int(key[1]), int(key[0]))),)


class AnomalyTask(TrainingTask):
    """VAE on normal tiles, recon + beta * KL."""

    def __init__(self, cfg: AnomalyRunConfig, env: DistEnv) -> None:
        from mmpath.datasets.synthetic_seg import make_anomaly_tiles
        from mmpath.models.heads import VAEHead
        from mmpath.models.registry import create_encoder

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

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.val_images is None:
            return {}
        from mmpath.tl.seg_metrics import anomaly_metrics

        device = next(self.module.parameters()).device
        x = torch.from_numpy(self.val_images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        scores = self.module.anomaly(x.to(device)).recon_error.cpu().numpy()
        res = anomaly_metrics(scores, self.val_labels)
        return {
            "auroc": res["auroc"],
            "auprc": res["auprc"],
            "recon_error_normal": float(scores[~self.val_labels].mean()),
        }

    def export(self, folder: Path) -> None:
        from mmpath.models.heads import TrainedHead, save_trained_head

        save_trained_head(
            TrainedHead("anomaly", self.module, (), self.cfg.model.image_size), folder
        )


@register_task("anomaly", config=AnomalyRunConfig, help="VAE anomaly head on normal tiles")
def build_anomaly(cfg: AnomalyRunConfig, env: DistEnv) -> AnomalyTask:
    return AnomalyTask(cfg, env)
