"""Contrastive image-text training (``mmpath train clip``).

Four modes (``model.mode``), one loop:

* ``scratch``: every weight from random init (``model.name: tiny_clip``, or two towers);
* ``finetune``: a pretrained image-text model, all weights trained (``model.name: plip``,
  ``local-dir:runs/clip/model``...);
* ``lit``: a locked pretrained text tower (e.g. ``minilm``) with a trainable image tower and
  projections (LiT with the roles of the towers as in the issue: text locked);
* ``heads``: both towers frozen, only the projections and the temperature train.

A model is either one image-text encoder (``model.name``) or an image tower and a text tower
(``model.image`` + ``model.text``) joined by the ``pair`` family with ``model.proj_dim``
projections and a learnable ``logit_scale``. Frozen towers stay in eval mode (no dropout).

The loss is open_clip's own: ``ClipLoss`` (InfoNCE with the model's learnable temperature,
clamped at 100 after each step as open_clip does) or ``SigLipLoss`` (sigmoid loss with a
learnable bias, initialised at scale 10 / bias -10 as in the SigLIP paper; the bias is a
training-only parameter and is not part of the exported encoder). Across processes the
features are gathered by those classes (``loss.local_loss`` / ``loss.gather_with_grad``
are open_clip's options of the same names).

Validation (every epoch): image->text and text->image recall@k on the held-out rows
(:func:`mmpath.train.metrics.retrieval_recall`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mmpath.errors import ConfigError
from mmpath.models.encoders._common import l2n
from mmpath.train.config import TrainConfig
from mmpath.train.core import LossOutput, TrainingTask
from mmpath.train.data import ImageDataset, TableConfig, export_stain, load_table, split_rows
from mmpath.train.dist import DistEnv
from mmpath.train.metrics import retrieval_recall
from mmpath.train.registry import register_task

log = logging.getLogger(__name__)

__all__ = [
    "ClipModelConfig",
    "ClipLossConfig",
    "ClipRunConfig",
    "ClipTask",
    "build_pair",
    "tower_groups",
]

Mode = Literal["scratch", "finetune", "lit", "heads"]


@dataclass(frozen=True)
class ClipModelConfig:
    """Which encoder to train and which parts of it."""

    mode: Mode = "scratch"
    name: str | None = None  # one image-text encoder: tiny_clip, plip, local-dir:/path ...
    image: str | None = None  # or an image tower ...
    text: str | None = None  # ... and a text tower, joined by projections
    proj_dim: int = 256
    image_kwargs: dict[str, Any] = field(default_factory=dict)
    text_kwargs: dict[str, Any] = field(default_factory=dict)
    save_name: str | None = None  # name stored in the model folder (its X_<slug> key)
    # lit/heads with two towers: run the locked text tower once per distinct caption and reuse
    # its features (the trainable projection still runs every step); same losses, faster
    cache_text: bool = True

    def __post_init__(self) -> None:
        if (self.name is None) == (self.image is None or self.text is None):
            raise ValueError(
                "give either model.name (an image-text encoder) or both model.image and "
                "model.text (two towers)"
            )
        if self.name is not None and (self.image or self.text):
            raise ValueError("model.name cannot be combined with model.image/model.text")
        if self.proj_dim < 1:
            raise ValueError("model.proj_dim must be >= 1")


@dataclass(frozen=True)
class ClipLossConfig:
    """open_clip's contrastive losses and their distributed options."""

    kind: Literal["clip", "siglip"] = "clip"
    local_loss: bool = True
    gather_with_grad: bool = True
    max_logit_scale: float = 100.0


@dataclass(frozen=True)
class ClipRunConfig:
    """``mmpath train clip`` run config (``configs/clip-tiny.yaml``)."""

    out: str = "runs/clip"
    # Default: LiT, the shipped demo ViT trained against the locked real MiniLM text tower.
    model: ClipModelConfig = field(
        default_factory=lambda: ClipModelConfig(mode="lit", image="mmpath-demo-vit", text="minilm")
    )
    data: TableConfig = field(default_factory=TableConfig)
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_ks: tuple[int, ...] = (1, 5)
    val_batch_size: int = 256


def build_pair(cfg: ClipModelConfig):
    """The image-text encoder ``cfg`` describes (pretrained weights unless ``scratch``)."""
    from mmpath.models import create_encoder, families

    pretrained = cfg.mode != "scratch"
    if cfg.name is not None:
        return create_encoder(cfg.name, pretrained=pretrained)
    extra = {} if pretrained else {"pretrained": False}
    return families.create(
        "pair",
        image=cfg.image,
        text=cfg.text,
        proj_dim=cfg.proj_dim,
        image_kwargs={**extra, **cfg.image_kwargs},
        text_kwargs={**extra, **cfg.text_kwargs},
    )


# Parameter-name prefixes of the towers per model layout; everything else is a "head"
# (projections, logit scale/bias).
_LAYOUTS = (
    # mmpath pair family: .image / .text towers, .image_proj / .text_proj / .logit_scale
    (("image.",), ("text.",)),
    # open_clip CLIP / CustomTextCLIP wrapped as .model (visual.proj is the image head)
    (
        ("model.visual.",),
        (
            "model.transformer.",
            "model.token_embedding.",
            "model.positional_embedding",
            "model.ln_final.",
            "model.text.",
        ),
    ),
    # transformers CLIPModel wrapped as .model
    (("model.vision_model.",), ("model.text_model.",)),
)
_HEADS = ("model.visual.proj", "model.text.proj", "model.text_projection", "logit_")


def tower_groups(encoder: nn.Module) -> dict[str, str]:
    """``{parameter name: "image" | "text" | "head"}`` for an image-text encoder."""
    names = [n for n, _ in encoder.named_parameters()]
    for image_prefixes, text_prefixes in _LAYOUTS:
        if any(n.startswith(image_prefixes) for n in names) and any(
            n.startswith(text_prefixes) for n in names
        ):
            out = {}
            for n in names:
                if n.startswith(_HEADS) or n.split(".")[-1].startswith("logit_"):
                    out[n] = "head"
                elif n.startswith(image_prefixes):
                    out[n] = "image"
                elif n.startswith(text_prefixes):
                    out[n] = "text"
                else:
                    out[n] = "head"
            return out
    raise ConfigError(
        f"cannot tell the image and text towers of {type(encoder).__name__} apart; use "
        "model.mode scratch/finetune, or build the model from model.image + model.text"
    )


class _ClipModule(nn.Module):
    """The encoder plus training-only parameters; frozen submodules stay in eval mode."""

    def __init__(self, encoder: nn.Module, siglip: bool, *, cache_text: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if siglip else None
        self.cache_text = cache_text
        self._text_cache: dict[str, torch.Tensor] = {}

    def locked_text_features(self, captions: list[str]) -> torch.Tensor:
        """The locked text tower's features per caption, each distinct caption computed once."""
        cache = self._text_cache
        missing = list(dict.fromkeys(c for c in captions if c not in cache))
        if missing:
            tower = self.encoder.text
            device = next(tower.parameters()).device
            with torch.no_grad():
                feats = tower.text_features(self.encoder.tokenize(missing).to(device))
            cache.update(zip(missing, feats, strict=True))
        return torch.stack([cache[c] for c in captions])

    def train(self, mode: bool = True) -> _ClipModule:
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def forward(self, batch: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, ...]:
        images, tokens = batch
        image = self.encoder.encode_image(images).proj
        if isinstance(tokens, list):  # captions: the locked tower's features come cached
            text = l2n(self.encoder.text_proj(self.locked_text_features(tokens)))
        else:
            text = self.encoder.encode_text(tokens)
        return image, text, self.encoder.logit_scale.exp()


class ClipTask(TrainingTask):
    """Image-text contrastive training; see the module docstring."""

    def __init__(self, cfg: ClipRunConfig, env: DistEnv) -> None:
        from open_clip.loss import ClipLoss, SigLipLoss

        self.cfg, self.env = cfg, env
        encoder = build_pair(cfg.model)
        if not encoder.info.has_image or not encoder.info.has_text:
            raise ConfigError(f"{encoder.info.name!r} is not an image-text encoder")
        if not isinstance(getattr(encoder, "logit_scale", None), nn.Parameter):
            raise ConfigError(f"{encoder.info.name!r} has no learnable logit_scale to train")
        frozen = {"scratch": (), "finetune": (), "lit": ("text",), "heads": ("image", "text")}
        if cfg.model.mode in ("lit", "heads"):
            groups = tower_groups(encoder)
            for name, p in encoder.named_parameters():
                p.requires_grad_(groups[name] not in frozen[cfg.model.mode])
        else:
            encoder.requires_grad_(True)
        siglip = cfg.loss.kind == "siglip"
        if siglip and cfg.model.mode == "scratch":
            with torch.no_grad():
                encoder.logit_scale.fill_(math.log(10.0))
        self.encoder = encoder
        text_tower = getattr(encoder, "text", None)
        self.cache_text = (
            cfg.model.cache_text
            and cfg.model.mode in ("lit", "heads")
            and isinstance(text_tower, nn.Module)
            and isinstance(getattr(encoder, "text_proj", None), nn.Module)
            and not any(p.requires_grad for p in text_tower.parameters())
        )
        self.module = _ClipModule(encoder, siglip, cache_text=self.cache_text)
        if siglip:
            self.criterion = SigLipLoss(rank=env.rank, world_size=env.world_size)
        else:
            self.criterion = ClipLoss(
                local_loss=cfg.loss.local_loss,
                gather_with_grad=cfg.loss.gather_with_grad,
                cache_labels=True,
                rank=env.rank,
                world_size=env.world_size,
            )
        self._max_log_scale = math.log(cfg.loss.max_logit_scale)
        data = encoder.info.data
        if cfg.data.input_size and cfg.data.input_size != data.input_size:
            data = replace(data, input_size=cfg.data.input_size)  # recorded in the export
            encoder.info = replace(encoder.info, data=data)
        table = load_table(cfg.data.train, cfg.data, captions=True)
        self.table = table  # its fitted stain target goes into the model folder
        if cfg.data.val:
            val_table = load_table(cfg.data.val, cfg.data, captions=True)
            train_rows, val_rows = np.arange(len(table)), np.arange(len(val_table))
        else:
            val_table = table
            train_rows, val_rows = split_rows(len(table), cfg.data.val_fraction, cfg.train.seed)
        common = dict(size=data.input_size, mean=data.mean, std=data.std, seed=cfg.train.seed)
        self.train_set = ImageDataset(table, train_rows, augment=cfg.data.augment, **common)
        self.val_set = ImageDataset(val_table, val_rows, augment=cfg.data.augment, **common)
        n_train = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        log.info(
            "clip (%s): %s, %d trainable parameters, %d train / %d val pairs",
            cfg.model.mode,
            encoder.info.name,
            n_train,
            len(self.train_set),
            len(self.val_set),
        )

    def train_dataset(self) -> ImageDataset:
        return self.train_set

    def collate(self, items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, Any]:
        images = torch.stack([im for im, _ in items])
        if self.cache_text:
            return images, [str(c) for _, c in items]
        return images, self.encoder.tokenize([c for _, c in items])

    def loss(self, output: tuple[torch.Tensor, ...], batch: Any) -> LossOutput:
        image, text, scale = output
        if self.module.logit_bias is not None:
            total = self.criterion(image, text, scale, self.module.logit_bias)
        else:
            total = self.criterion(image, text, scale)
        return LossOutput(total, {})

    def after_step(self) -> None:
        with torch.no_grad():
            self.encoder.logit_scale.clamp_(0, self._max_log_scale)

    def embed_val(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Projected image and caption embeddings of the validation rows."""
        device = next(self.module.parameters()).device
        bs = self.cfg.val_batch_size
        images = []
        for start in range(0, len(self.val_set), bs):
            batch = torch.stack(
                [self.val_set[i][0] for i in range(start, min(start + bs, len(self.val_set)))]
            )
            images.append(self.encoder.encode_image(batch.to(device)).proj.float())
        captions = [self.val_set.table.captions[int(r)] for r in self.val_set.rows]
        unique, inverse = np.unique(
            np.asarray(captions, dtype=object).astype(str), return_inverse=True
        )
        texts = []
        for start in range(0, len(unique), bs):
            tokens = self.encoder.tokenize(list(unique[start : start + bs])).to(device)
            texts.append(self.encoder.encode_text(tokens).float())
        text = torch.cat(texts)[torch.as_tensor(inverse, device=device)]
        return torch.cat(images), text, captions

    def evaluate(self, epoch: int) -> dict[str, float]:
        if len(self.val_set) == 0:
            return {}
        image, text, captions = self.embed_val()
        return retrieval_recall(image, text, captions, ks=self.cfg.val_ks)

    def export(self, folder: Path) -> None:
        from mmpath.models import save_encoder
        from mmpath.models.registry import encoders

        m = self.cfg.model
        # LiT's locked text tower holds its registry entry's own weights: the folder stores a
        # reference instead of a copy (MiniLM would add 90 MB to every run).
        refer = {}
        if (
            m.mode == "lit"
            and m.text in encoders
            and not m.text_kwargs
            and encoders.get(m.text).meta.weights is not None  # not a random test tower
        ):
            refer["text"] = m.text
        save_encoder(self.encoder, folder, name=m.save_name, refer=refer)
        export_stain(self.table, folder)


@register_task("clip", config=ClipRunConfig, help="contrastive image-text training")
def build(cfg: ClipRunConfig, env: DistEnv) -> ClipTask:
    """Builder registered as ``clip``."""
    return ClipTask(cfg, env)
