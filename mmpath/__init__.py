"""mmpath: multimodal representation learning for computational pathology.

``import mmpath as mm`` is light: ``io``, ``pp``, ``tl``, ``pl``, ``index``, ``datasets``,
``metrics``, ``archive`` and ``models`` load on first access (``mm.tl`` imports scipy,
``mm.models`` torch), so the CLI's light commands (``mmpath --help``, ``mmpath info``)
never pay for what they do not use;
``mmpath.train`` is imported explicitly by whoever trains.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmpath import errors
from mmpath._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from mmpath import archive, datasets, index, io, metrics, models, pl, pp, tl

_LAZY = ("io", "pp", "tl", "pl", "index", "datasets", "models", "metrics", "archive")

__all__ = ["io", "pp", "tl", "pl", "index", "datasets", "errors", "models", "__version__"]
__all__ += ["metrics", "archive"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"mmpath.{name}")
    raise AttributeError(f"module 'mmpath' has no attribute {name!r}")
