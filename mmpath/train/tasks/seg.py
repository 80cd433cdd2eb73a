"""The segmentation head as a training task: ``mmpath train seg``.

Both plug into the one loop (:func:`mmpath.train.fit`): checkpoints, resume, DDP and the
cosine schedule come from there; this module only says what the data, module, loss and model
folder are.

* ``seg``: a U-Net head (:class:`~mmpath.models.heads.UNetHead`) on a registry encoder, loss
  Dice + class-weighted CE (``loss.class_weights: auto`` = ``1/sqrt(pixel frequency)`` from
  the training masks, so rare nuclei keep their gradient), validation Dice/Jaccard per class.
  The exported model is the epoch with the best validation Dice, not the last one, and a
  validation whose predictions are constant logs a collapse warning (:mod:`._selection`).
  Data: synthetic images with known masks (``data.source: synthetic``), image + mask pairs
  (``data.source: pairs``, an ``.npz`` or an ``images/`` + ``masks/`` folder; see
  :mod:`mmpath.datasets.seg_pairs`), or the real histolytics stroma (``data.source: stromal``,
  left half only, its bottom rows held out for validation; the right half stays unseen for
  testing, ``configs/seg-stroma.yaml``). Images larger
  than ``data.tile_size`` are randomly cropped (seeded per sample); flips and 90° rotations
  apply to image and mask together.
The model folder (``<out>/model``) is what :func:`mmpath.models.heads.load_trained_head`
reads: ``config.yaml`` (``format: mmpath-head``) + ``model.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mmpath.errors import ConfigError, DataError
from mmpath.models.transform import to_tensor
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
]


# -- segmentation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SegDataConfig:
    """Where image + mask pairs come from."""

    source: Literal["synthetic", "pairs", "annotations", "stromal"] = "synthetic"
    train: str = ""  # pairs: an .npz or a folder with images/ and masks/; stromal: its folder
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
    # CE class weights: auto = 1/sqrt(pixel frequency) of the training masks, none = all 1,
    # or one number per class
    class_weights: Literal["auto", "none"] | tuple[float, ...] = "auto"


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
    if cfg.source == "stromal":
        from mmpath.datasets.stromal import stromal_nuclei

        tr, va = stromal_nuclei(cfg.train or None).train_val_crops(
            size=2 * cfg.tile_size, val_fraction=cfg.val_fraction
        )
        names = tuple(cfg.class_names) or ("background", "nucleus")
        if len(names) != 2:
            raise ConfigError(f"data.class_names: the stroma has 2 classes, got {names}")
        return list(tr.images), list(tr.masks), list(va.images), list(va.masks), names
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
        self.mean, self.std = tuple(mean), tuple(std)
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
        return to_tensor(img, self.mean, self.std), torch.from_numpy(
            np.ascontiguousarray(m).astype(np.int64)
        )

    def __getitem__(self, key):
        from mmpath.train.augment import sample_rng

        return self.item(int(key[0]), sample_rng(self.seed, int(key[1]), int(key[0])))


class SegTask(TrainingTask):
    """U-Net on a shared encoder, Dice + CE."""

    def __init__(self, cfg: SegRunConfig, env: DistEnv) -> None:
        from mmpath.models.factory import create_encoder
        from mmpath.models.heads import DiceCELoss, UNetHead, class_weights_from_masks
        from mmpath.train._selection import BestCheckpoint

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
        cw = cfg.loss.class_weights
        if cw == "auto":
            cw = class_weights_from_masks(tm, len(names), ignore_index=cfg.data.ignore_index)
            log.debug("CE class weights from the training masks: %s", np.round(cw, 3).tolist())
        elif cw == "none":
            cw = None
        elif len(cw) != len(names):
            raise ConfigError(f"loss.class_weights: {len(names)} classes, got {list(cw)}")
        self.loss_fn = DiceCELoss(
            dice_weight=cfg.loss.dice_weight,
            ce_weight=cfg.loss.ce_weight,
            ignore_index=cfg.data.ignore_index,
            class_weight=cw,
        )
        self.best = BestCheckpoint(cfg.out, "dice")
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
        from mmpath.metrics import dice_jaccard

        if not len(self.val_set):
            return {}
        from mmpath.train._selection import collapse_warning

        device = next(self.module.parameters()).device
        probs, targets = [], []
        for i in range(0, len(self.val_set), 16):
            items = [self.val_set.item(j, None) for j in range(i, min(i + 16, len(self.val_set)))]
            x = torch.stack([a for a, _ in items]).to(device)
            with torch.no_grad():
                probs.append(self.module.predict_proba(x).cpu().numpy())
            targets += [b.numpy() for _, b in items]
        prob = np.concatenate(probs)
        preds = list(prob.argmax(1).astype(np.uint8))
        warning = collapse_warning(prob, np.stack(targets))
        if warning:
            log.warning("epoch %d: %s", epoch, warning)
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
        out["collapsed"] = float(warning is not None)
        self.best.update(self.module, out["dice"], epoch=epoch)
        out["best_dice"] = self.best.value
        return out

    def export(self, folder: Path) -> None:
        from mmpath.models.heads import TrainedHead, save_trained_head

        self.best.restore(self.module)
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
