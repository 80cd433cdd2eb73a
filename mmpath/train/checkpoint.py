"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint (``<out>/checkpoints/last.pt``) holds the trainable weights and buffers, the
optimiser, scheduler and grad-scaler states, the step, and every process's RNG states
(python, numpy, torch CPU and CUDA). Frozen, pretrained parameters are not stored: the task
rebuilds them from its config. The file is written to a temporary name and renamed, so a crash
never leaves a truncated checkpoint, and it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmpath.errors import ConfigError
from mmpath.io._atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["rng_state", "set_rng_state", "trainable_state", "save_checkpoint", "load_checkpoint"]

CKPT_DIR = "checkpoints"
LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train plus all persistent buffers (frozen weights are rebuilt)."""
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k not in frozen}


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / CKPT_DIR / LAST


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with ``torch.save``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    log.debug("checkpoint written: %s (step %s)", path, state.get("step"))


def load_checkpoint(
    path: Path, needed: tuple[str, ...] = ("step", "model", "optimizer", "scheduler")
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``); ``needed``
    are the keys it must hold (a resumable training state by default)."""
    if not path.is_file():
        raise ConfigError(
            f"no checkpoint at {str(path)!r} to resume from; run without --resume to start afresh"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle payloads, foreign files
        kind = (
            "holds objects other than tensors and plain values (refused unread)"
            if isinstance(err, pickle.UnpicklingError)
            else "is damaged or not a checkpoint"
        )
        raise ConfigError(
            f"the checkpoint {str(path)!r} {kind}; delete it and run without --resume to "
            "start afresh"
        ) from None
    if not isinstance(state, dict) or not all(k in state for k in needed):
        raise ConfigError(
            f"{str(path)!r} is not an mmpath training checkpoint; delete it and run without "
            "--resume to start afresh"
        )
    return state


def load_trainable(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state` back; anything else missing must be a frozen parameter."""
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches are raised even with strict=False
        first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), err)
        raise ConfigError(
            f"the checkpoint does not match this run's model ({first}); resume with the "
            "config it was written with"
        ) from None
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise ConfigError(
            "the checkpoint does not match this run's model (missing "
            f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}); resume with the "
            "config it was written with"
        )
