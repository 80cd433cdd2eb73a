"""The archive folder: per-slide tables, per-slide records, locks and the manifest.

::

    archive/
      archive.json          the tiling the archive was made with (a run with another is refused)
      config.yaml           the resolved config of the last run
      tables/<slide_id>.h5ad    one tile table per slide, written atomically
      slides/<slide_id>.json    the slide's record: state, error, tiles, timings, encoders...
      locks/<slide_id>.lock     held while a job works on the slide
      thumbs/<slide_id>.jpg     the slide's tile grid over its thumbnail
      manifest.jsonl        every record in one file (rewritten atomically by run and status)
      summary.md            written by `mmpath archive status` (with contact_sheet.jpg)

The per-slide records are the truth (each written atomically by the job that holds the
slide's lock, so two runners never overwrite each other's records); the manifest is their
consolidated copy. A slide counts as done only when its record says ``done`` *and* its table
exists with the byte size the record names, so a table written by a job that died before its
record (or a record whose table vanished) is redone, never trusted.

Locks are files created with ``O_EXCL`` holding the owner's host, pid and a token; the owner
refreshes the file's mtime while it works. A lock is stale (and taken over) when its owner is
a dead process on this host, or when it has not been refreshed for ``stale_lock_seconds``
(owners on other hosts, e.g. a Dask or Ray worker on another node that died).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmpath._version import __version__
from mmpath.errors import ArchiveError
from mmpath.io._atomic import atomic_write_text, pid_alive

log = logging.getLogger(__name__)

FORMAT = 1
DONE, FAILED, RUNNING, PENDING, INTERRUPTED = "done", "failed", "running", "pending", "interrupted"
STATES = (DONE, FAILED, INTERRUPTED, RUNNING, PENDING)
HOST = socket.gethostname()


def input_signature(path: str, *, with_hash: bool = False) -> dict[str, Any]:
    """Size and mtime of a slide file (plus its sha256 when asked); changes mean "redo"."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return {"size": None, "mtime_ns": None}
    sig: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash and p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        sig["sha256"] = h.hexdigest()
    return sig


def same_input(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if not old:
        return False
    keys = ("size", "mtime_ns") + (("sha256",) if "sha256" in new and "sha256" in old else ())
    return all(old.get(k) == new.get(k) for k in keys)


class ArchiveStore:
    """Paths and records of one archive folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.tables = self.root / "tables"
        self.slides = self.root / "slides"
        self.locks = self.root / "locks"
        self.thumbs = self.root / "thumbs"
        self.manifest = self.root / "manifest.jsonl"
        self.meta = self.root / "archive.json"

    def exists(self) -> bool:
        return self.meta.is_file()

    def require(self) -> ArchiveStore:
        if not self.exists():
            raise ArchiveError(
                f"{str(self.root)!r} is not an archive folder (no archive.json); make one with "
                "`mmpath archive run SLIDES -o FOLDER`"
            )
        return self

    def make_dirs(self) -> None:
        for d in (self.tables, self.slides, self.locks, self.thumbs):
            d.mkdir(parents=True, exist_ok=True)

    # -- records ---------------------------------------------------------------------------

    def table_path(self, slide_id: str) -> Path:
        return self.tables / f"{slide_id}.h5ad"

    def thumb_path(self, slide_id: str) -> Path:
        return self.thumbs / f"{slide_id}.jpg"

    def record_path(self, slide_id: str) -> Path:
        return self.slides / f"{slide_id}.json"

    def read_record(self, slide_id: str) -> dict[str, Any] | None:
        return _read_json(self.record_path(slide_id))

    def write_record(self, rec: dict[str, Any]) -> None:
        atomic_write_text(self.record_path(rec["slide_id"]), json.dumps(rec, default=str))

    def create_record(self, rec: dict[str, Any]) -> bool:
        """Write ``rec`` only if the slide has no record yet (a pending placeholder)."""
        path = self.record_path(rec["slide_id"])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str))
        return True

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.slides.is_dir():
            return
        for p in sorted(self.slides.glob("*.json")):
            if p.name.startswith("."):
                continue
            rec = _read_json(p)
            if rec is not None:
                yield rec

    def is_done(self, rec: dict[str, Any] | None) -> bool:
        """Record says done and the table is there, whole (its size is the recorded one)."""
        if not rec or rec.get("state") != DONE:
            return False
        table = self.table_path(rec["slide_id"])
        try:
            return table.stat().st_size == rec.get("table_bytes")
        except OSError:
            return False

    def write_manifest(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
        atomic_write_text(self.manifest, text)

    # -- the archive's tiling --------------------------------------------------------------

    def check_tiling(self, tiling: dict[str, Any], *, overwrite: bool = False) -> None:
        """Record the tiling of a new archive; refuse another one unless ``overwrite``."""
        meta = _read_json(self.meta)
        if meta is not None and meta.get("tiling") != tiling and not overwrite:
            diff = [
                f"{k}={meta['tiling'].get(k)!r} (this run: {tiling.get(k)!r})"
                for k in sorted(set(tiling) | set(meta.get("tiling", {})))
                if meta["tiling"].get(k) != tiling.get(k)
            ]
            raise ArchiveError(
                f"archive {str(self.root)!r} was made with another tiling: {', '.join(diff)}; "
                "use another output folder, or pass --overwrite (overwrite=True) to redo every "
                "slide with the new tiling"
            )
        if meta is None or meta.get("tiling") != tiling:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.meta,
                json.dumps(
                    {"format": FORMAT, "tiling": tiling, "mmpath_version": __version__}, indent=2
                ),
            )

    # -- locks -----------------------------------------------------------------------------

    def lock(self, slide_id: str, *, stale_seconds: float) -> SlideLock:
        return SlideLock(self.locks / f"{slide_id}.lock", stale_seconds=stale_seconds)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable record %s (%s)", path, err)
        return None


class SlideLock:
    """An exclusive, self-refreshing lock file for one slide (see the module docstring)."""

    def __init__(self, path: Path, *, stale_seconds: float) -> None:
        self.path = path
        self.stale = float(stale_seconds)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The current owner's record, or None when the lock is free."""
        return _read_json(self.path)

    def is_stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        info = self.holder() or {}
        pid = info.get("pid")
        if info.get("host") == HOST and isinstance(pid, int) and not pid_alive(pid):
            return True
        return age > self.stale

    def acquire(self) -> bool:
        """Take the lock (taking over a stale one); False when a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                if not self.is_stale():
                    return False
                self.break_stale()
                continue
            info = {"host": HOST, "pid": os.getpid(), "token": self.token, "since": time.time()}
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(info))
            self._start_heartbeat()
            return True
        return False

    def break_stale(self) -> None:
        """Remove a stale lock: rename it to a unique name first, so two breakers never both
        delete a lock that a third runner has just taken."""
        grave = self.path.with_name(f".{self.path.name}.stale-{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, grave)
            log.info("took over the stale lock %s", self.path)
            grave.unlink()

    def _start_heartbeat(self) -> None:
        period = max(0.5, min(30.0, self.stale / 4))

        def beat() -> None:
            while not self._stop.wait(period):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, daemon=True, name="mmpath-lock")
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        info = self.holder()
        if info and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
