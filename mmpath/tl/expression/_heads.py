"""Moved to :mod:`mmpath.models.heads.expression` (kept so old imports work; torch loads on
first use of a name)."""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = (
    "ContrastiveHeads",
    "GatedFusionHead",
    "MLPHead",
    "bleep_loss",
    "load_numpy_state",
    "run",
    "small_work_threads",
    "state_to_numpy",
)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module("mmpath.models.heads.expression"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
