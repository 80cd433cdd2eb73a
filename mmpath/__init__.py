"""mmpath: multimodal representation learning for computational pathology.

``import mmpath as mm`` is light: it loads ``io``, ``pp``, ``tl``, ``pl``, ``index``,
``datasets`` and ``archive`` but never torch. ``mm.models`` (the only torch-importing
subpackage) loads on first access; ``mmpath.train`` is imported explicitly by whoever trains.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmpath import archive, datasets, errors, index, io, pl, pp, tl
from mmpath._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from mmpath import models

__all__ = [
    "io", "pp", "tl", "pl", "index", "datasets", "errors", "models", "archive", "__version__"
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "models":
        return importlib.import_module("mmpath.models")
    raise AttributeError(f"module 'mmpath' has no attribute {name!r}")
