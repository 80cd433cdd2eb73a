"""Atomic file output: write to a temporary sibling, then rename over the target.

A crash halfway leaves the temporary file (named ``.<name>.tmp-<pid>``), never a file at the
final name that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# The process umask, read once at import (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and directories. On error the temporary is removed and the previous
    ``target`` (if any) is untouched.

    Example
    -------
    >>> with atomic_path("out.h5ad") as tmp:
    ...     adata.write_h5ad(tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _default_permissions(tmp)
        if tmp.is_dir() and target.is_dir():
            # os.replace cannot swap a non-empty directory: move the old one aside first.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    finally:
        _remove(tmp)


def check_replaceable(target: str | os.PathLike[str], markers: tuple[str, ...], what: str) -> None:
    """Refuse to replace ``target`` as a whole unless it is empty or already a ``what`` folder.

    Saving a model folder swaps the whole directory (:func:`atomic_path`), so pointing it at a
    run folder, a data folder or ``.`` would delete everything there. A folder counts as a
    ``what`` folder when it holds every file in ``markers``.
    """
    from mmpath.errors import ConfigError

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{str(target)!r} is a file; pass a folder to save the {what} into")
    complete = all((target / m).is_file() for m in markers)
    if target.is_dir() and any(target.iterdir()) and not complete:
        raise ConfigError(
            f"{str(target)!r} already holds files and is not a saved {what} (no "
            f"{', '.join(markers)}); saving replaces the whole folder, so choose a new or "
            "empty one"
        )


def _default_permissions(path: Path) -> None:
    """Give outputs the user's usual permissions: some writers (safetensors, tempfile) create
    0600 files, which a lab sharing a results folder could not read."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        base = 0o777 if p.is_dir() else 0o666
        with contextlib.suppress(OSError):
            os.chmod(p, base & ~_UMASK)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
