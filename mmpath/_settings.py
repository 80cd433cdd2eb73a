"""Process-wide settings: where mmpath keeps weights and caches."""

from __future__ import annotations

import os
from pathlib import Path


def mmpath_home() -> Path:
    """``$MMPATH_HOME`` or ``~/.cache/mmpath``: weights live in ``<home>/weights/<name>/``."""
    return Path(os.environ.get("MMPATH_HOME", Path.home() / ".cache" / "mmpath")).expanduser()


def default_num_workers() -> int:
    """Reader worker processes to use by default: all cores but one, at least 0."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
