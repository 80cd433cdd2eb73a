"""``mmpath <verb>``: argument plumbing over the public API.

Each verb lives in a small module of this package exposing ``register(subparsers)``; the
parser's ``func(args) -> int`` does the work. Errors print one line and exit 2 (``--debug``
shows the traceback); a KeyboardInterrupt exits 130. Any other exception is a bug or an
unforeseen input: it too is one line (type and message, exit 2) naming ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from mmpath._version import __version__
from mmpath.errors import MmpathError

# Modules under mmpath.cli that contribute verbs, in help order.
COMMAND_MODULES = ["slides", "models", "embed", "tasks", "expr", "search", "train", "heads", "demo"]
COMMAND_MODULES += ["archive"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmpath",
        description="Multimodal representation learning for computational pathology.",
    )
    parser.add_argument("--version", action="version", version=f"mmpath {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(f"mmpath.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    noisy = ("PIL", "matplotlib", "numba", "h5py", "fsspec", "urllib3", "httpx", "anndata", "faiss")
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    shown = warnings.showwarning
    if not args.debug:  # Python warnings as one line each, like our own
        warnings.showwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except MmpathError as err:
        if args.debug:
            raise
        print(f"mmpath: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmpath: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - last resort: a bug or an unforeseen input
        if args.debug:
            raise
        text = " ".join(str(err).split())[:300] or "no message"
        print(
            f"mmpath: error: {type(err).__name__}: {text} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 2
    finally:
        warnings.showwarning = shown


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"mmpath: warning: {text}", file=sys.stderr)
