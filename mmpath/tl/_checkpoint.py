"""Chunk checkpoints that make :func:`mmpath.tl.embed` resumable.

A checkpoint is a sidecar directory (the CLI puts it next to the table:
``<table>.h5ad.embed-<key>.partial/``) holding

* ``meta.json``: a fingerprint of the run: encoder, weights (name and a sample of the
  parameters), batch and chunk sizes, and everything that decides the pixels of each row
  (:func:`pixels_fingerprint`: row names, x/y, each slide's path, file size and mtime, and its
  tiling spec: size, level, read size, mpp, downsample; plus the model's preprocessing). A
  checkpoint whose fingerprint differs is discarded with a one-line note, never mixed in.
* one ``<slide>-<start>-<stop>.npz`` per finished chunk of one slide's rows: features,
  projections and the tile-ok flags. Each file is written atomically, so an interrupted run
  leaves whole chunks only.

Chunks hold whole batches, so a resumed run feeds the model exactly the batches an
uninterrupted run would: results are identical, not just close.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.io._atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

META = "meta.json"


def sidecar_path(table_path: str | os.PathLike[str], key: str) -> Path:
    """Where the CLI checkpoints the embedding ``key`` of the table at ``table_path``."""
    p = Path(table_path)
    return p.with_name(f"{p.name}.embed-{key}.partial")


def rows_digest(obs_names) -> str:
    h = hashlib.sha1()
    for name in obs_names:
        h.update(str(name).encode())
        h.update(b"\0")
    return h.hexdigest()


# Tiling keys that decide which pixels a row holds (the rest, e.g. n_tiles, follow from them).
_PIXEL_KEYS = ("size", "level", "read_size", "size0", "level_downsample", "mpp", "mpp_effective")


def _file_identity(path: str | None, remap) -> dict[str, Any] | None:
    """Path, byte size and mtime of a slide file (``None`` for in-memory slides)."""
    from mmpath.io.tiles import _remap_path

    if not path:
        return None
    real = _remap_path(str(path), remap)
    try:
        st = os.stat(real)
    except OSError:
        return {"path": str(path)}
    return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def pixels_fingerprint(adata, slide_ids: list[str], *, remap=None) -> dict[str, Any]:
    """Everything that decides the pixels behind each row of a tile table.

    Row names, the x/y columns (as bytes), and per slide its file identity (path, size,
    mtime) and tiling spec. Two tables with the same ``obs_names`` but other positions, tile
    sizes, levels or slide files give different fingerprints.
    """
    from mmpath import _keys as K
    from mmpath.io import _prov

    h = hashlib.sha1(np.ascontiguousarray(_prov.tile_xy(adata)).tobytes())
    slides = {}
    for sid in slide_ids:
        rec = _prov.slide_record(adata, sid)
        spec = rec.get(K.UNS_TILING, {})
        slides[sid] = {
            "file": _file_identity(rec.get("path"), remap),
            "dims": rec.get("dims"),
            "mpp": rec.get("mpp"),
            "tiling": {k: spec.get(k) for k in _PIXEL_KEYS},
        }
    return {"rows": rows_digest(adata.obs_names), "xy": h.hexdigest(), "slides": slides}


def _differing(old: Any, new: dict[str, Any]) -> list[str]:
    if not isinstance(old, dict):
        return ["meta.json"]
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class ChunkStore:
    """A checkpoint directory; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        meta = self.path / META
        if meta.is_file():
            try:
                old = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != self.fingerprint:
                what = ", ".join(_differing(old, self.fingerprint))
                log.warning(
                    "checkpoint %s was made with other %s; discarding it and starting over",
                    self.path,
                    what,
                )
                shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        if not meta.is_file():
            atomic_write_text(meta, json.dumps(self.fingerprint, indent=1, sort_keys=True))

    def _file(self, slide_pos: int, start: int, stop: int) -> Path:
        return self.path / f"{slide_pos:05d}-{start:09d}-{stop:09d}.npz"

    def load(self, slide_pos: int, start: int, stop: int):
        """``(features, proj or None, ok)`` of a finished chunk, or ``None``."""
        f = self._file(slide_pos, start, stop)
        if not f.is_file():
            return None
        try:
            with np.load(f) as z:
                proj = z["proj"] if "proj" in z.files else None
                return z["features"], proj, z["ok"]
        except (OSError, ValueError, KeyError):
            log.warning("checkpoint chunk %s is damaged; recomputing it", f)
            with contextlib.suppress(OSError):
                f.unlink()
            return None

    def save(self, slide_pos: int, start: int, stop: int, features, proj, ok) -> None:
        arrays = {"features": features, "ok": ok}
        if proj is not None:
            arrays["proj"] = proj
        with atomic_path(self._file(slide_pos, start, stop)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    def n_chunks(self) -> int:
        return sum(1 for _ in self.path.glob("*.npz"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
