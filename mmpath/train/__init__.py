"""Training: one loop for every task (contrastive image-text, self-supervised, heads).

``mmpath.train`` is never imported by ``mmpath/__init__``; importing it is cheap (torch loads
when :func:`fit` or a task is first used).

Example
-------
>>> from mmpath.config import load_config
>>> from mmpath.train import fit, get_task
>>> spec = get_task("clip")
>>> cfg = load_config(spec.config, "configs/clip-tiny.yaml", ["train.epochs=1"])
>>> result = fit(spec.build, cfg)
"""

from __future__ import annotations

import importlib
from typing import Any

from mmpath.train.registry import TASK_MODULES, TaskSpec, get_task, list_tasks, register_task

__all__ = [
    "fit",
    "FitResult",
    "TrainingTask",
    "LossOutput",
    "SampleKey",
    "TrainConfig",
    "TaskSpec",
    "TASK_MODULES",
    "get_task",
    "list_tasks",
    "register_task",
]

_LAZY = {
    "fit": "mmpath.train.core",
    "FitResult": "mmpath.train.core",
    "TrainingTask": "mmpath.train.core",
    "LossOutput": "mmpath.train.core",
    "SampleKey": "mmpath.train.core",
    "TrainConfig": "mmpath.train.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmpath.train' has no attribute {name!r}")
