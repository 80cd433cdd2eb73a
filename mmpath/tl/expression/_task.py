"""Moved to :mod:`mmpath.train.tasks.expr` (kept so old imports work; torch loads on first
use of a name)."""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = ("ExprDataConfig", "ExprHeadConfig", "ExprHeadTask", "ExprRunConfig", "ExprTask", "build")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module("mmpath.train.tasks.expr"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
