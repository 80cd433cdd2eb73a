"""Atomic, recoverable output: write to a temporary sibling, then rename over the target.

A crash halfway leaves the temporary (named ``.<name>.tmp-<pid>``), never a file at the final
name that looks complete.

Files are replaced with one ``os.replace``. A directory cannot be renamed over a non-empty one,
so a directory swap takes two renames: ``target -> .<name>.old-<pid>``, then
``.<name>.tmp-<pid> -> target``. Both the new contents and the parent directory are fsynced
before the first rename, so after a crash (kill -9, power loss) the disk holds either

* the old target (crash before the first rename; a ``.tmp`` may be left),
* no target, a complete ``.old`` and a complete ``.tmp`` (crash between the renames), or
* the new target and maybe a ``.old`` (crash before the old one was removed).

:func:`recover` turns each of these back into one complete target and removes the leftovers
of processes that are no longer running. It runs whenever an output is written again
(:func:`atomic_path`) and when a directory output (index, model, head, weights folder) is
opened, so the state between the two renames is never seen as "missing".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# The process umask, read once at import (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)

_TMP, _OLD = "tmp", "old"


def _sibling(target: Path, kind: str, pid: int | None = None) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid() if pid is None else pid}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, recovered: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and directories. On error the temporary is removed and the previous
    ``target`` (if any) is untouched. Leftovers of an earlier crashed write of the same
    ``target`` are recovered or removed first (see the module docstring).

    Example
    -------
    >>> with atomic_path("out.h5ad") as tmp:
    ...     adata.write_h5ad(tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not recovered:  # ``recovered=True``: the caller just did (one listing per folder)
        recover(target)
    tmp = _sibling(target, _TMP)
    _remove(tmp)
    try:
        yield tmp
        _default_permissions(tmp)
        _fsync_tree(tmp)
        if tmp.is_dir() and target.is_dir():
            # os.replace cannot swap a non-empty directory: move the old one aside first.
            old = _sibling(target, _OLD)
            _remove(old)
            _fsync(target.parent)
            os.replace(target, old)
            try:
                _swap_hook()
                os.replace(tmp, target)
            except BaseException:
                if not target.exists():  # an error (not a kill) between the renames
                    os.replace(old, target)
                raise
            _fsync(target.parent)
            _remove(old)
        else:
            os.replace(tmp, target)
            _fsync(target.parent)
    finally:
        _remove(tmp)


def _swap_hook() -> None:
    """Called between the two renames of a directory swap; tests raise here to simulate a
    crash at the worst moment."""


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this host (a zombie, killed but not yet reaped, is
    dead); used to tell a dead writer's leftovers (index builds, archive locks) from a live
    one's."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but is not ours
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _leftovers(target: Path) -> list[Path]:
    """``.<name>.tmp-<pid>`` and ``.<name>.old-<pid>`` siblings of ``target``."""
    prefix = f".{target.name}."
    try:
        with os.scandir(target.parent) as it:
            names = [e.name for e in it if e.name.startswith(prefix)]
    except OSError:
        return []
    out = []
    for name in names:
        m = _LEFTOVER.match(name)
        if m and m["name"] == target.name:
            out.append(target.parent / name)
    return out


def recover(target: str | os.PathLike[str]) -> Path | None:
    """Repair an interrupted write of ``target`` and remove leftovers of dead writers.

    * no ``target`` but a ``.old-<pid>``: the swap stopped between its renames; the new
      version (``.tmp-<pid>`` of the same pid, complete since the swap had started) is
      moved into place, or else the old one is restored;
    * ``target`` present: ``.old-*`` and ``.tmp-*`` siblings of writers no longer running
      are deleted (a crashed table, checkpoint or index folder can be hundreds of MB).

    Leftovers of running processes are never touched. Returns the sibling that became
    ``target``, or ``None``.
    """
    target = Path(target)
    found: dict[str, dict[int, Path]] = {_TMP: {}, _OLD: {}}
    for p in _leftovers(target):
        m = _LEFTOVER.match(p.name)
        pid = int(m["pid"])
        if not pid_alive(pid):
            found[m["kind"]][pid] = p
    restored = None
    if not target.exists() and found[_OLD]:
        # The newest interrupted swap wins (highest mtime of its .old).
        pid = max(found[_OLD], key=lambda k: found[_OLD][k].stat().st_mtime_ns)
        src = found[_TMP].pop(pid, None) or found[_OLD].pop(pid)
        try:
            os.replace(src, target)
        except FileNotFoundError:  # another process recovered it first
            return None
        _fsync(target.parent)
        restored = src
        log.warning(
            "recovered %s from %s left by an interrupted write (process %d)", target, src.name, pid
        )
    for group in found.values():
        for p in group.values():
            if p != restored:
                log.info("removing %s left by a crashed write of %s", p.name, target.name)
                _remove(p)
    return restored


def interrupted_hint(target: str | os.PathLike[str]) -> str:
    """A sentence naming leftovers of an interrupted write of ``target``, or ``""``.

    For "not found" errors: if a running process is swapping ``target`` right now, or a
    leftover could not be recovered, the user learns where their data is.
    """
    target = Path(target)
    names = sorted(p.name for p in _leftovers(target))
    if not names:
        return ""
    return f" (an interrupted write left {', '.join(names)} in {str(target.parent)!r})"


def _fsync(path: Path) -> None:
    """fsync a file, or a directory so the renames/creations in it reach the disk (a no-op
    where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (or the file ``path``)."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for f in files:
                p = Path(root) / f
                if not p.is_symlink():
                    _fsync(p)
            _fsync(Path(root))
    else:
        _fsync(path)


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
