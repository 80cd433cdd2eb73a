"""Helpers shared by CLI verbs."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

from mmpath.errors import ConfigError


def progress(items: Iterable, args, **kwargs):
    """A tqdm bar unless ``--quiet`` (bars go to stderr)."""
    return tqdm(items, disable=bool(getattr(args, "quiet", False)), file=sys.stderr, **kwargs)


def summary(args, text: str) -> None:
    """The one-line summary a command ends with (kept even with --quiet)."""
    print(text)


def remap_arg(parser) -> None:
    parser.add_argument(
        "--remap",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rewrite slide paths starting with OLD to NEW (repeatable), for moved slides",
    )


def parse_remap(items: list[str]) -> dict[str, str] | None:
    """``["OLD=NEW", ...]`` -> ``{OLD: NEW}``."""
    out = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise ConfigError(f"--remap expects OLD=NEW, got {item!r}")
        out[old] = new
    return out or None


def slide_mpp_arg(parser) -> None:
    parser.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 µm/px of the slides, overriding (or replacing missing) metadata",
    )


def skip_table(adata, path) -> bool:
    """True (with a warning) for a table a batch verb skips instead of failing on: a slide
    table that a glob such as ``tiles/*.h5ad`` picked up next to the tile tables
    (``zs_slides.h5ad``), or an empty tile table (a slide without tissue; `tile` warned)."""
    from mmpath.io import _prov

    if _prov.is_slide_table(adata):
        warn(f"{path}: a slide table (one row per slide), not a tile table; skipped")
        return True
    if adata.n_obs == 0:
        warn(f"{path}: the tile table is empty; skipped")
        return True
    return False


def warn(text: str) -> None:
    """One ``mmpath: warning: ...`` line on stderr."""
    print(f"mmpath: warning: {text}", file=sys.stderr)


def input_error(text: str) -> None:
    """One ``mmpath: error: ...`` line on stderr for an input a batch verb could not process
    (the batch goes on; the verb exits 2 at the end)."""
    print(f"mmpath: error: {text}", file=sys.stderr)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (worker counts, seeds)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def device_arg(text: str) -> str:
    """argparse type: a torch device this machine has (``cuda`` needs a GPU)."""
    import argparse

    from mmpath.errors import MmpathError

    try:
        from mmpath.models.registry import check_device

        check_device(text)
    except MmpathError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
