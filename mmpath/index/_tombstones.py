"""Removing tiles from on-disk segments: the tombstone file, and compaction.

A removal from an on-disk index (:mod:`mmpath.index._ondisk`) writes the removed tile ids to
``removed.npy`` (:func:`read_tombstones` reads it back, checked); searches skip them.
``compact=True`` rewrites a segment holding tombstones without them (:func:`rewrite`), from its
own memory-mapped lists, a bounded block at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmpath.errors import IndexError_
from mmpath.index import _faiss as F
from mmpath.index import _meta as M
from mmpath.index import _ondisk as OD

log = logging.getLogger(__name__)

__all__ = ["rewrite", "read_tombstones"]


def rewrite(seg, dead: np.ndarray, header, stem: Path) -> tuple[int, int] | None:
    """Write ``seg`` without the (sorted) ``dead`` ids as ``stem.faiss`` + ``stem.ivfdata``.

    Streams the lists: live entries are copied list by list into an in-memory block of at
    most about :data:`mmpath.index._ondisk.BLOCK_BYTES`, each block merged into a scratch
    ``OnDiskInvertedLists`` file, and those merged into the segment's file; memory stays at
    one block whatever the segment's size. Returns the new ``(lowest, highest)`` id, or
    ``None`` when no tile is left.
    """
    fa = F.faiss()
    src = fa.extract_index_ivf(seg.index).invlists
    cs, nlist = src.code_size, src.nlist
    lo, hi, scratch, lists = None, None, [], []

    def flush(blk) -> None:
        part = stem.with_name(f"{stem.name}.part{len(scratch)}.ivfdata")
        scratch.append(OD.merge_into(header, [blk], part))
        lists.append(fa.extract_index_ivf(scratch[-1]).invlists)

    try:
        blk, held = fa.ArrayInvertedLists(nlist, cs), 0
        for i in range(nlist):
            n = int(src.list_size(i))
            if not n:
                continue
            ids = fa.rev_swig_ptr(src.get_ids(i), n).astype(np.int64)
            live = ~M.members(ids, dead)
            if not live.any():
                continue
            codes = fa.rev_swig_ptr(src.get_codes(i), n * cs).reshape(n, cs)
            keep_ids = np.ascontiguousarray(ids[live])
            keep_codes = np.ascontiguousarray(codes[live])
            blk.add_entries(i, len(keep_ids), fa.swig_ptr(keep_ids), fa.swig_ptr(keep_codes))
            lo = int(keep_ids.min()) if lo is None else min(lo, int(keep_ids.min()))
            hi = int(keep_ids.max()) if hi is None else max(hi, int(keep_ids.max()))
            held += len(keep_ids) * (cs + 8)
            if held >= OD.BLOCK_BYTES:  # bound memory: this block goes to a scratch file
                flush(blk)
                blk, held = fa.ArrayInvertedLists(nlist, cs), 0
        flush(blk)
        del blk
        out = OD.merge_into(header, lists, stem.with_suffix(".ivfdata"))
        fa.write_index(out, str(stem.with_suffix(".faiss")))
        del out
    finally:
        lists.clear()  # the scratch lists are closed before their files go
        scratch.clear()
        for f in stem.parent.glob(f"{stem.name}.part*.ivfdata"):
            f.unlink()
    log.info(
        "rewrote segment %s without %d removed tiles as %s", seg.path.stem, len(dead), stem.name
    )
    return None if lo is None else (lo, hi)


def read_tombstones(path: Path, count: int) -> np.ndarray:
    """The sorted int64 ids in ``removed.npy``, checked against the manifest's count."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IndexError_(f"cannot read {path} ({err}); rebuild the index") from None
    if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != count:
        raise IndexError_(f"{path} does not hold {count} tile ids; rebuild the index")
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise IndexError_(f"{path} is not sorted; rebuild the index")
    return ids
