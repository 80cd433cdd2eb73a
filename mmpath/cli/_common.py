"""Helpers shared by CLI verbs."""

from __future__ import annotations

import argparse
import logging
import re
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


def estimate_mpp_arg(parser) -> None:
    parser.add_argument(
        "--estimate-mpp",
        action="store_true",
        help="estimate each slide's µm/px from its nuclei: used when the metadata has none, "
        "a warning when it disagrees with the metadata by more than 1.5x",
    )


_CAVEATS_SHOWN: set[str] = set()


def caveat(text: str | None) -> None:
    """One ``mmpath: caveat: ...`` line on stderr (once per run, kept with --quiet): the
    outputs come from a demo or random-weight model (``mm.models.caveats.caveat``)."""
    if text and text not in _CAVEATS_SHOWN:
        _CAVEATS_SHOWN.add(text)
        print(f"mmpath: caveat: {text}", file=sys.stderr)


def reset_caveats() -> None:
    """Forget the caveats said in this run (``main`` calls it when a run ends)."""
    _CAVEATS_SHOWN.clear()


def encoder_caveat(encoder) -> str:
    """The caveat of an Encoder instance (``""`` for real weights), printed once."""
    from mmpath.models.caveats import caveat as _caveat

    text = _caveat(encoder)
    caveat(text)
    return text


def recorded_caveat(adata, key: str) -> str:
    """The caveat recorded with ``obsm[key]``'s embedding provenance, printed once."""
    from mmpath.index._tables import embedding_record

    text = str(embedding_record(adata, key).get("caveat") or "")
    caveat(text)
    return text


def plots_arg(parser) -> None:
    parser.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write PNG pictures of the results next to them (default: on when -o is a folder)",
    )


def want_plots(args, folder: bool) -> bool:
    """``--plots``/``--no-plots`` when given, else on when the output is a folder."""
    return bool(folder) if getattr(args, "plots", None) is None else bool(args.plots)


def plot_failed(what: str, err: Exception) -> None:
    """A picture that could not be drawn (e.g. its slide moved) is a warning, not a failure:
    the results themselves were written."""
    warn(f"could not draw {what}: {' '.join(str(err).split())[:200]}")


class WarningDedup(logging.Filter):
    """Per run, each kind of warning (its message with quoted names and numbers blanked) is
    shown ``show`` times; the rest are counted and summarised in one line at the end (so a
    cohort of 150 slides does not print 300 lines). Used as a logging filter and as
    ``warnings.showwarning``."""

    def __init__(self, show: int = 3) -> None:
        super().__init__()
        self.show = show
        self.counts: dict[str, int] = {}
        self.example: dict[str, str] = {}

    def _see(self, text: str) -> bool:
        kind = _KIND.sub("…", text)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.example.setdefault(kind, text)
        return self.counts[kind] <= self.show

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        return self._see(record.getMessage())

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if self._see(text):
            print(f"mmpath: warning: {text}", file=sys.stderr)

    def summarise(self) -> None:
        for kind, n in self.counts.items():
            if n > self.show:
                print(
                    f"mmpath: warning: {n} warnings like {self.example[kind][:120]!r} in this "
                    f"run ({n - self.show} not shown; --debug shows all)",
                    file=sys.stderr,
                )
        self.counts.clear()


_KIND = re.compile(r"'[^']*'|\"[^\"]*\"|\d+(?:\.\d+)?")


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
        from mmpath.models.factory import check_device

        check_device(text)
    except MmpathError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
