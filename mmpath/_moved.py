"""Old import paths of names that moved to a new home: served with a DeprecationWarning.

A module whose names moved sets ``__getattr__ = moved(__name__, {"old": "new.module.name"})``;
``from old.module import name`` and ``old.module.name`` then still work, warn once per call
site, and return the very object of the new home (no copy).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def _public(path: str) -> str:
    return path.replace("mmpath.", "mm.", 1) if path.startswith("mmpath.") else path


def moved(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that forwards ``names`` (old name -> ``"pkg.mod.attr"``)."""

    def forward(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        mod, _, attr = target.rpartition(".")
        warnings.warn(
            f"{_public(module)}.{name} moved to {_public(target)}; import it from there "
            "(the old name will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(mod), attr)

    return forward
