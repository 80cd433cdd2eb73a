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


def slide_mpp_arg(parser) -> None:
    parser.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 µm/px of the slides, overriding (or replacing missing) metadata",
    )
