"""Helpers shared by the training tests (plain functions, imported by name)."""

from __future__ import annotations


def make_config(task: str, overrides: list[str]):
    """A run config of ``task`` from dataclass defaults plus dotted overrides."""
    from mmpath.config import load_config
    from mmpath.train import get_task

    return load_config(get_task(task).config, None, overrides)


def clip_overrides(train_csv, val_csv, out, **extra) -> list[str]:
    """A small, fast CLIP run on the synthetic caption sets (tiny_clip, 48 px, no HED)."""
    base = {
        "out": str(out),
        "model.name": "tiny_clip",
        "data.train": f"[{train_csv}]",
        "data.val": f"[{val_csv}]" if val_csv else "[]",
        "data.input_size": 48,
        "data.augment.hed_scale": 0,
        "data.augment.hed_shift": 0,
        "train.batch_size": 30,
        "train.epochs": 4,
        "train.lr": 3e-3,
        "train.weight_decay": 0.01,
        "train.warmup_steps": 3,
        "train.quiet": "true",
        "train.log_every_steps": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
