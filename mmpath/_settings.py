"""Process-wide settings: where mmpath keeps weights and caches, and which surface (API or
CLI) error messages should name arguments for."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path


def mmpath_home() -> Path:
    """``$MMPATH_HOME`` or ``~/.cache/mmpath``: weights live in ``<home>/weights/<name>/``."""
    return Path(os.environ.get("MMPATH_HOME", Path.home() / ".cache" / "mmpath")).expanduser()


def default_num_workers() -> int:
    """Reader worker processes used when ``num_workers=None``: all cores but one, at most 2.

    The one home of this default (``mm.tl.embed`` reads it from here; it was also defined,
    unused and with another cap, in this module before).
    """
    return min(2, max(0, (os.cpu_count() or 1) - 1))


# -- which surface is talking to the user: the Python API or the CLI ----------------------
# Error messages name the argument the user actually typed: ``mpp=`` from Python,
# ``--slide-mpp`` from the CLI. The CLI sets the surface for the duration of a command.
_SURFACE: contextvars.ContextVar[str] = contextvars.ContextVar("mmpath_surface", default="api")


def spell(api: str, cli: str | None) -> str:
    """``cli`` while a CLI command runs (when it has such a flag), else ``api``.

    Example
    -------
    >>> f"pass {spell('mpp=0.5', '--slide-mpp 0.5')}"
    'pass mpp=0.5'
    """
    return cli if cli is not None and _SURFACE.get() == "cli" else api


@contextlib.contextmanager
def cli_surface() -> Iterator[None]:
    """Within this block, messages spell arguments as CLI flags (see :func:`spell`)."""
    token = _SURFACE.set("cli")
    try:
        yield
    finally:
        _SURFACE.reset(token)
