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
from mmpath.cli import _common
from mmpath.errors import MmpathError

# Modules under mmpath.cli that contribute verbs, in help order.
COMMAND_MODULES = ["slides", "models", "embed", "tasks", "expr", "search", "train", "heads", "demo"]
COMMAND_MODULES += ["serve"]  # the search web page (mmpath.serve)
COMMAND_MODULES += ["annotate"]  # issue 11: labels from the CLI
COMMAND_MODULES += ["mil"]
COMMAND_MODULES += ["archive"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``mmpath <verb>: error: ... (see --help)``, exit 2.

    argparse's own error prints the whole usage block first (five lines or more for most
    verbs); subparsers are built with this class too.
    """

    def error(self, message: str):  # type: ignore[override]
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as done:  # --help, --version, or a one-line usage error
        return done.code if isinstance(done.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    # Our own handler for this run only: in-process callers (tests, notebooks) get their
    # handlers back afterwards, and no handler outlives the stderr it wrote to.
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    noisy = ("PIL", "matplotlib", "numba", "h5py", "fsspec", "urllib3", "httpx", "anndata", "faiss")
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    shown = warnings.showwarning
    dedup = _common.WarningDedup(show=1 if args.quiet else 3)
    if not args.debug:  # Python warnings as one line each, like our own, deduplicated
        warnings.showwarning = dedup.showwarning
        for handler in logging.getLogger().handlers:
            handler.addFilter(dedup)
    from mmpath._settings import cli_surface

    try:
        with cli_surface():  # error messages name CLI flags, not Python arguments
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
        dedup.summarise()
        _common.reset_caveats()  # the next in-process run (tests, notebooks) says them again
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
