"""The on-disk index: a directory with three parts, written atomically.

``index.faiss``
    The faiss index (``faiss.write_index``, which writes in place: so it goes into a
    temporary directory that replaces the old one only when everything is written).
``metadata.parquet``
    One row per tile, indexed by tile id.
``manifest.json``
    Encoder, embedding key, dim, normalisation, factory, query defaults, counts, slide
    provenance, mmpath/faiss versions and the sha256 of every other file. Written last.

An on-disk index (built from an archive, format version 2) has instead of one faiss file a
header ``index.faiss`` (the trained, empty IVF) and immutable segments ``seg-NNNNN.faiss`` +
``seg-NNNNN.ivfdata`` (inverted lists, memory-mapped at load), listed under ``segments``.
Slides removed from it leave their tile ids in ``removed.npy`` (tombstones that searches skip,
format version 3, so an older mmpath refuses the index instead of returning removed tiles).

Loading checks the manifest against the files (format, checksums, counts, dim), so a damaged
or mismatched index is refused with a clear error instead of answering wrongly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.errors import IndexError_
from mmpath.index import _faiss as F
from mmpath.index._meta import MetaStore
from mmpath.io._atomic import atomic_path, interrupted_hint, recover
from mmpath.io._digest import sha256_file

if TYPE_CHECKING:
    from mmpath.index.tileindex import TileIndex

log = logging.getLogger(__name__)

FORMAT = "mmpath-tile-index"
FORMAT_VERSION = 3  # 2: on-disk segments, 3: with tombstones; others are still written as 1
INDEX_FILE = "index.faiss"
META_FILE = "metadata.parquet"
MANIFEST_FILE = "manifest.json"
#: Indexes with up to this many tiles hold all their metadata in memory once loaded; above,
#: only tile id, slide, x, y (the rest is read from the parquet file for the hits).
MEMORY_MAX = 1_000_000


sha256 = sha256_file  # the one file digest (mmpath.io._digest)


def write_index(index, path: Path) -> None:
    """``faiss.write_index`` (a seam the tests patch to simulate a crash mid-write)."""
    F.faiss().write_index(index, str(path))


def save(idx, path: str | os.PathLike[str]) -> Path:
    """Write ``idx`` to the directory ``path`` atomically; returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IndexError_(f"{str(path)!r} is a file, not an index directory; pick a new path")
    if path.exists() and not (path / MANIFEST_FILE).is_file() and any(path.iterdir()):
        raise IndexError_(f"{str(path)!r} exists and is not an mmpath index; pick a new directory")
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        names = [INDEX_FILE, META_FILE]
        manifest = dict(idx.manifest)
        for key in ("segments", "segment_bounds", "n_removed"):
            manifest.pop(key, None)
        version, known = 1, {}
        if idx._parts is not None:
            names, entries, known = idx._parts.save(tmp)
            names.append(META_FILE)
            manifest.update(entries)
            version = 3 if entries["n_removed"] else 2
        else:
            write_index(idx.index, tmp / INDEX_FILE)
        idx._meta.write(tmp / META_FILE)
        manifest.update(
            {
                "format": FORMAT,
                "format_version": version,
                "n_vectors": len(idx),
                "n_slides": len(idx.slide_ids),
                "mmpath_version": __version__,
                "faiss_version": F.faiss().__version__,
                "files": {
                    name: known.get(name)
                    or {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                    for name in names
                },
            }
        )
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, default=str), encoding="utf-8"
        )
    log.info("saved index (%d tiles) to %s", len(idx), path)
    return path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a saved index, with clear errors for a missing or foreign directory."""
    path = Path(path)
    mpath = path / MANIFEST_FILE
    recover(path)  # a save killed between its two renames
    if not path.is_dir():
        from mmpath._settings import spell

        made_by = spell("mm.index.build(...).save(path)", "`mmpath index build ... -o DIR`")
        raise IndexError_(
            f"no index at {str(path)!r} (expected a directory made by {made_by})"
            + interrupted_hint(path)
        )
    if not mpath.is_file():
        raise IndexError_(f"{str(path)!r} has no {MANIFEST_FILE}; it is not an mmpath index")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IndexError_(f"the manifest of {str(path)!r} is unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexError_(f"{str(path)!r} is not an mmpath tile index")
    _check_manifest(manifest, path)
    return manifest


_REQUIRED = ("format_version", "files", "n_vectors", "n_slides", "dim")


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest missing a required field or a checksum, before faiss parses a file.

    The checksums are mandatory because ``faiss.read_index`` on a damaged file can return
    wrong neighbours or abort the process; unknown optional fields are tolerated.
    """
    where = f"the manifest of {str(path)!r}"
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise IndexError_(f"{where} lacks {', '.join(missing)}; rebuild the index")
    version = manifest["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise IndexError_(f"{where} has a malformed format_version {version!r}; rebuild the index")
    if version > FORMAT_VERSION:
        raise IndexError_(
            f"{str(path)!r} was written by a newer mmpath ({manifest.get('mmpath_version')}); "
            "upgrade mmpath to read it"
        )
    for key in ("n_vectors", "n_slides", "dim"):
        v = manifest[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise IndexError_(f"{where} has a malformed {key} {v!r}; rebuild the index")
    files = manifest["files"]
    segments = manifest.get("segments", [])
    if not isinstance(segments, list) or not all(
        isinstance(n, str) and n.startswith("seg-") and "/" not in n for n in segments
    ):
        raise IndexError_(f"{where} has malformed segments; rebuild the index")
    n_removed = manifest.get("n_removed", 0)
    if isinstance(n_removed, bool) or not isinstance(n_removed, int) or n_removed < 0:
        raise IndexError_(f"{where} has a malformed n_removed {n_removed!r}; rebuild the index")
    for name in _needed(manifest):
        rec = files.get(name) if isinstance(files, dict) else None
        ok = (
            isinstance(rec, dict)
            and isinstance(rec.get("sha256"), str)
            and len(rec["sha256"]) == 64
            and isinstance(rec.get("bytes"), int)
            and not isinstance(rec.get("bytes"), bool)
        )
        if not ok:
            raise IndexError_(
                f"{where} has no valid checksum for {name} (sha256 and bytes are required); "
                "rebuild the index"
            )


def _needed(manifest: dict[str, Any]) -> list[str]:
    """The files a manifest's index is made of."""
    from mmpath.index._ondisk import TOMBSTONES

    segments = manifest.get("segments", [])
    needed = [INDEX_FILE, META_FILE] + [f"{n}{x}" for n in segments for x in (".faiss", ".ivfdata")]
    return needed + ([TOMBSTONES] if manifest.get("n_removed", 0) else [])


def load(
    path: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    embedding_key: str | None = None,
    dim: int | None = None,
    mmap: bool = False,
    verify: bool = True,
    gpu: bool | None = None,
) -> TileIndex:
    """Load a saved index, checking its files against the manifest.

    Parameters
    ----------
    path
        The directory written by :meth:`TileIndex.save`.
    encoder, embedding_key, dim
        What the caller expects; a different value in the manifest is refused.
    mmap
        Memory-map the faiss index instead of reading it into RAM (for indexes larger
        than memory; flat-code and IVF indexes support it).
    verify
        Check the sha256 of the files (reads them once more).
    gpu
        As in :func:`mmpath.index.build`.

    Returns
    -------
    A :class:`~mmpath.index.TileIndex`.

    Example
    -------
    >>> idx = mm.index.load("archive.idx", encoder="conch")
    """
    return _load(path, encoder, embedding_key, dim, mmap, verify, gpu)


def load_to_change(path: str | os.PathLike[str], *, gpu: bool | None = None):
    """Load a saved index that will be changed and saved back (add, remove).

    Files the save rewrites (header, metadata, tombstones, an in-memory index) are verified
    first, so damage is never laundered into fresh checksums. The immutable segment lists are
    only size-checked: their recorded checksums are carried into the new manifest (a later
    :func:`load` still verifies them), so changing an archive index does not rehash its
    multi-GB lists (that made every add O(N)).
    """
    return _load(path, None, None, None, False, True, gpu, hash_segments=False)


def _load(path, encoder, embedding_key, dim, mmap, verify, gpu, *, hash_segments=True):
    from mmpath.index.tileindex import TileIndex

    path = Path(path)
    manifest = read_manifest(path)
    expected = {"encoder": encoder, "embedding_key": embedding_key, "dim": dim}
    for key, want in expected.items():
        have = manifest.get(key)
        if want is None:
            continue
        same = K.slugify(str(want)) == K.slugify(str(have)) if key == "encoder" else want == have
        if not same:
            raise IndexError_(
                f"the index at {str(path)!r} holds {key} {have!r}, not {want!r}; query it with "
                f"{have!r} or build an index for {want!r}"
            )
    segments = manifest.get("segments", [])
    for name in _needed(manifest):
        rec = manifest["files"][name]
        f = path / name
        if not f.is_file():
            raise IndexError_(f"the index at {str(path)!r} is missing {name}; restore or rebuild")
        check = verify and (hash_segments or not name.startswith("seg-"))
        if f.stat().st_size != int(rec["bytes"]) or (check and sha256(f) != rec["sha256"]):
            raise IndexError_(
                f"{name} in {str(path)!r} does not match its manifest checksum (damaged or "
                "edited); restore it or rebuild the index"
            )
    fa = F.faiss()
    parts = None
    if segments:
        from mmpath.index._ondisk import Parts

        if gpu:
            raise IndexError_(
                "an on-disk index is searched on the CPU (its lists are memory-mapped); "
                "pass gpu=False"
            )
        gpu = False
        n_removed = int(manifest.get("n_removed", 0))
        parts = Parts.load(
            path, segments, manifest.get("segment_bounds"), n_removed, manifest["files"]
        )
        index = parts.view
    else:
        flags = fa.IO_FLAG_MMAP | fa.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = fa.read_index(str(path / INDEX_FILE), flags)
        except RuntimeError as err:
            raise IndexError_(
                f"faiss cannot read {path / INDEX_FILE} ({F._first_line(err)})"
            ) from None
    try:
        meta = MetaStore.from_parquet(path / META_FILE)
    except (OSError, ValueError, KeyError) as err:
        raise IndexError_(f"cannot read {path / META_FILE} ({err}); rebuild the index") from None
    if len(meta) <= MEMORY_MAX:  # small: hold every column, as an in-memory build does
        meta = MetaStore.from_frame(meta.frame())
    n = int(manifest.get("n_vectors", -1))
    live = index.ntotal - (len(parts.removed) if parts is not None else 0)
    if live != n or len(meta) != n or index.d != int(manifest["dim"]):
        raise IndexError_(
            f"the index at {str(path)!r} is inconsistent (faiss {live} live vectors of dim "
            f"{index.d}, metadata {len(meta)} rows, manifest {n} of dim {manifest['dim']}); "
            "rebuild it"
        )
    if parts is not None and len(parts.removed) and np.isin(parts.removed, meta.ids).any():
        raise IndexError_(f"the index at {str(path)!r} lists live tiles as removed; rebuild it")
    for key in (
        "format",
        "format_version",
        "files",
        "n_vectors",
        "n_slides",
        "faiss_version",
        "segments",
        "segment_bounds",
        "n_removed",
    ):
        manifest.pop(key, None)
    return TileIndex(index, meta, manifest, gpu=gpu, parts=parts)
