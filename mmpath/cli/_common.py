"""Helpers shared by CLI verbs."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


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


def slide_mpp_arg(parser) -> None:
    parser.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 µm/px of the slides, overriding (or replacing missing) metadata",
    )


def skip_slide_table(adata, path) -> bool:
    """True (with a warning) for a slide table that a glob such as ``tiles/*.h5ad`` picked up
    next to the tile tables (``zs_slides.h5ad``): batch verbs skip it instead of failing."""
    from mmpath.io import _prov

    if not _prov.is_slide_table(adata):
        return False
    warn(f"{path}: a slide table (one row per slide), not a tile table; skipped")
    return True


def warn(text: str) -> None:
    """One ``mmpath: warning: ...`` line on stderr."""
    print(f"mmpath: warning: {text}", file=sys.stderr)


def input_error(text: str) -> None:
    """One ``mmpath: error: ...`` line on stderr for an input a batch verb could not process
    (the batch goes on; the verb exits 2 at the end)."""
    print(f"mmpath: error: {text}", file=sys.stderr)
