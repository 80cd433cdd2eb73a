"""The loop's own configuration, shared by every training task.

A task's run config is a frozen dataclass with (at least) an ``out`` folder and a ``train``
section of type :class:`TrainConfig`; the rest (``data``, ``model``, ``loss``...) belongs to
the task. Load it with :func:`mmpath.config.load_config`, which refuses unknown keys and applies
dotted overrides (``train.lr=3e-4``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping settings of :func:`mmpath.train.fit`.

    ``batch_size`` is the *global* batch: with ``N`` processes each one takes
    ``batch_size / N`` samples of every step, so a run on 1 and on N processes sees the same
    batches (and, for contrastive losses with all-gathered features, the same loss).
    """

    epochs: int = 1
    max_steps: int = 0  # > 0 stops the run after this many optimiser steps
    batch_size: int = 64  # global, split evenly over processes
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    grad_clip: float | None = 1.0  # max global grad norm; null disables clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # AMP is CUDA-only
    ckpt_every_steps: int = 0  # 0: checkpoint at the end of every epoch only
    log_every_steps: int = 10
    num_workers: int = 0  # DataLoader worker processes per training process
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    val_every_epochs: int = 1  # 0 disables per-epoch validation
    quiet: bool = False  # no progress bar

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("train.epochs must be >= 1")
        if self.batch_size < 1:
            raise ValueError("train.batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("train.lr must be > 0")
        if self.max_steps < 0 or self.warmup_steps < 0 or self.ckpt_every_steps < 0:
            raise ValueError("train.max_steps, warmup_steps and ckpt_every_steps must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("train.grad_clip must be > 0 (or null to disable)")
        if self.log_every_steps < 1:
            raise ValueError("train.log_every_steps must be >= 1")
