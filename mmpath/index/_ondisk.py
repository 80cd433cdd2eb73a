"""Indexes larger than memory: IVF blocks built in worker processes, merged into on-disk lists.

How an archive is indexed (the faiss recipe of ``faiss.contrib.ondisk``):

1. one pass over the tables' ``obs`` (:func:`mmpath.index._source.scan`) counts the usable rows
   and hands out tile ids, so workers need no coordination;
2. the IVF is trained once on a seeded sample of the vectors (the same rows
   :func:`mmpath.index._faiss.train_rows` draws for an in-memory build, so both train the same
   quantizer);
3. worker processes (``concurrent.futures``; forked, each with one OpenMP thread, since
   libgomp's pool does not survive a fork) each read their tables one at a time, add them to
   a copy of the trained, empty index and write that IVF block plus its metadata rows;
4. the blocks' inverted lists are merged into one ``OnDiskInvertedLists`` file (``.ivfdata``),
   which searches memory-map.

On disk an index is a header (``index.faiss``: the trained, empty IVF) plus immutable segments
(``seg-NNNNN.faiss`` with its ``seg-NNNNN.ivfdata``). Adding tables builds a new segment with
the trained quantizer and never rewrites the existing ones; the segments are searched as one IVF
through ``faiss.HStackInvertedLists`` (list ``i`` of the view is list ``i`` of every segment, so
results equal a single merged index's). Existing segments are hard-linked (or copied across
file systems) into a new save, so a save stays atomic without copying the lists.

Removing slides never rewrites a list file either: their tile ids become tombstones
(``removed.npy``, sorted int64), which every search excludes inside faiss' list scan (an
``IDSelectorNot`` over a cached bitmap of the tombstones, one bit per tile id), so ``k`` live
hits come back without over-fetching and results equal an index without those tiles. A
segment whose every tile is removed is dropped whole, with its tombstones; tiles of the
segment still in memory (added, not yet saved) are removed from it for real. ``compact=True``
rewrites the segments holding tombstones without them (list by list, a bounded block at a
time, into the new save's folder), so the removed tiles stop costing scan time.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpath.errors import IndexError_
from mmpath.index import _center
from mmpath.index import _faiss as F
from mmpath.index import _meta as M
from mmpath.index import _source as S
from mmpath.index import _tables as T

log = logging.getLogger(__name__)

#: Bytes of codes + ids per block file: bounds what one worker holds in memory (faiss grows
#: each inverted list by doubling, so a worker peaks below twice this plus one table).
BLOCK_BYTES = 256 * 2**20
HEADER = "index.faiss"
SEGMENT = "seg-{:05d}"
TOMBSTONES = "removed.npy"


def plan(n: int, dim: int, factory: str | None) -> F.Plan:
    """The factory for a build streamed from files: exact up to ``EXACT_MAX``, then an IVF
    whose lists can live on disk (``IVF<n>,Flat``; ``IVF<n>,SQ8`` above ``REFINE_FLAT_MAX``)."""
    if factory is None and n > F.EXACT_MAX:
        codec = "Flat" if n <= F.REFINE_FLAT_MAX else "SQ8"
        factory = f"IVF{F.nlist_for(n)},{codec}"
    return F.choose(n, dim, factory)


def can_go_on_disk(index) -> bool:
    """True for a bare IVF whose inverted lists faiss can keep in an ``.ivfdata`` file."""
    fa = F.faiss()
    top = fa.downcast_index(index)
    if not isinstance(top, fa.IndexIVF):
        return False
    return not isinstance(top, getattr(fa, "IndexIVFFastScan", ()))


# -- building ---------------------------------------------------------------------------------


def _block_task(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: add a group of tables to a copy of the trained index; write block + metadata."""
    fa = F.faiss()
    if task.get("threads"):
        fa.omp_set_num_threads(int(task["threads"]))
    index = fa.read_index(task["trained"])
    frames, slides = [], {}
    for path, start in task["items"]:
        t = S.read_table(Path(path), task["use_rep"])
        got = T.collect([t], task["use_rep"], int(start))
        del t
        if len(got.vectors):
            vectors = _center.apply(got.vectors, task.get("center"))
            index.add_with_ids(vectors, got.meta.index.to_numpy(np.int64))
            frames.append(got.meta)
        slides.update(got.slides)
    fa.write_index(index, task["block"])
    if frames:
        M.write_part(pd.concat(frames) if len(frames) > 1 else frames[0], Path(task["meta"]))
    return {"n": int(index.ntotal), "slides": slides, "meta": bool(frames)}


def _groups(counts: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Contiguous groups of tables with about equal row counts."""
    n_groups = max(1, min(n_groups, len(counts)))
    edges = np.cumsum(counts)
    total = edges[-1] if len(edges) else 0
    cut = np.searchsorted(edges, total * np.arange(1, n_groups) / n_groups, side="left") + 1
    return [g for g in np.split(np.arange(len(counts)), np.unique(cut)) if len(g)]


def build_blocks(
    sc: S.Scan, index, use_rep: str, workdir: Path, *, workers: int, center=None
) -> dict:
    """Fill the trained ``index`` from the scanned tables, block by block, on disk
    (vectors centred by the ``center`` statistics of :mod:`mmpath.index._center`, if given).

    Returns ``{"parts": Parts, "meta": Path, "slides": {...}, "build": {"blocks",
    "processes"}}``: one process when ``workers`` is 1 or there is a single block.
    """
    fa = F.faiss()
    trained = workdir / "trained.faiss"
    fa.write_index(index, str(trained))
    per_vector = F.faiss().extract_index_ivf(index).code_size + 8
    n_tasks = max(int(workers), math.ceil(sc.n * per_vector / BLOCK_BYTES))
    tasks = [
        {
            "trained": str(trained),
            "block": str(workdir / f"block-{b:05d}.faiss"),
            "meta": str(workdir / f"meta-{b:05d}.parquet"),
            "items": [(str(sc.paths[i]), int(sc.starts[i])) for i in grp],
            "use_rep": use_rep,
            "threads": 1 if workers > 1 else 0,
            "center": center,
        }
        for b, grp in enumerate(_groups(sc.counts, n_tasks))
    ]
    processes = min(workers, len(tasks)) if workers > 1 and len(tasks) > 1 else 1
    log.info("adding %d vectors in %d block(s) on %d process(es)", sc.n, len(tasks), processes)
    if processes > 1:
        import multiprocessing as mp

        from mmpath._fork import worker_start_method

        # fork: spawn would re-run the caller's script (no __main__ guard in notebooks and
        # scripts); a forked child whose parent ran OpenMP is safe with one OpenMP thread.
        # Not while Ray/Dask/gRPC threads are alive (a fork would deadlock): forkserver then.
        ctx = mp.get_context(worker_start_method())
        with ProcessPoolExecutor(processes, mp_context=ctx) as ex:
            results = list(ex.map(_block_task, tasks))
    else:
        results = [_block_task(t) for t in tasks]
    slides: dict[str, Any] = {}
    for r in results:
        slides.update(r["slides"])
    seg = Segment.merged(index, [Path(t["block"]) for t in tasks], workdir / SEGMENT.format(0))
    seg.bounds = (int(sc.starts[0]), int(sc.starts[0]) + sc.n - 1)  # ids handed out in a row
    for t in tasks:
        Path(t["block"]).unlink()
    trained.unlink()
    meta = workdir / M.META_NAME
    M.merge_parts([Path(t["meta"]) for t, r in zip(tasks, results) if r["meta"]], meta)
    return {
        "parts": Parts(F.faiss().clone_index(index), [seg]),
        "meta": meta,
        "slides": slides,
        "build": {"blocks": len(tasks), "processes": processes},
    }


# -- segments -----------------------------------------------------------------------------------


def merge_into(header, invlists: list, ivfdata: Path):
    """A copy of the empty trained ``header`` holding ``invlists`` merged into an
    ``OnDiskInvertedLists`` file (what ``faiss.contrib.ondisk.merge_ondisk`` does, given lists
    rather than file names, so the caller keeps ownership of its sources and frees them)."""
    fa = F.faiss()
    out = fa.clone_index(header)
    ivf = fa.extract_index_ivf(out)
    if out.ntotal:
        raise IndexError_("the index header is not empty; rebuild the index")
    ondisk = fa.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    vec = fa.InvertedListsPtrVector()
    for il in invlists:
        vec.push_back(il)
    with _quiet():
        ntotal = ondisk.merge_from_multiple(vec.data(), vec.size(), False)
    out.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    return out


@dataclass
class Segment:
    """One IVF holding a share of the vectors; ``path`` is its ``.faiss`` file once saved.

    ``bounds`` is ``(lowest, highest)`` tile id in it (recorded in the manifest; read from the
    lists when missing), used to find the segments a removal empties.
    """

    index: Any
    path: Path | None = None
    bounds: tuple[int, int] | None = None
    #: rewrite it without its tombstoned tiles at the next save (``remove(compact=True)``)
    compact: bool = False
    #: the manifest's sha256/bytes of its two files, carried into the next save (the files
    #: are immutable: rehashing multi-GB lists at every add would make an add O(N))
    records: dict[str, Any] | None = None

    def ids(self) -> np.ndarray:
        """Every tile id stored in the segment (reads the id part of each list)."""
        fa = F.faiss()
        il = fa.extract_index_ivf(self.index).invlists
        out = [np.zeros(0, np.int64)]
        for lst in range(il.nlist):
            n = il.list_size(lst)
            if n:
                out.append(fa.rev_swig_ptr(il.get_ids(lst), n).astype(np.int64))
        return np.concatenate(out)

    def id_bounds(self) -> tuple[int, int] | None:
        if self.bounds is None and self.index.ntotal:
            ids = self.ids()
            self.bounds = (int(ids.min()), int(ids.max()))
        return self.bounds

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Which of the sorted ``ids`` are tiles of this segment (a mask)."""
        b = self.id_bounds()
        mask = np.zeros(len(ids), bool)
        if b is None or not len(ids):
            return mask
        lo, hi = np.searchsorted(ids, [b[0], b[1] + 1])
        if b[1] - b[0] + 1 == self.index.ntotal:  # contiguous ids (as build and add give)
            mask[lo:hi] = True
        else:
            mask[lo:hi] = np.isin(ids[lo:hi], self.ids())
        return mask

    @classmethod
    def merged(cls, header, blocks: list[Path], stem: Path) -> Segment:
        fa = F.faiss()
        srcs = [fa.read_index(str(b), fa.IO_FLAG_MMAP) for b in blocks]
        lists = [fa.extract_index_ivf(s).invlists for s in srcs]
        out = merge_into(header, lists, stem.with_suffix(".ivfdata"))
        del srcs
        fa.write_index(out, str(stem.with_suffix(".faiss")))
        return cls(out, stem.with_suffix(".faiss"))

    @classmethod
    def read(cls, path: Path, bounds=None) -> Segment:
        fa = F.faiss()
        try:
            with _quiet():
                index = fa.read_index(str(path), fa.IO_FLAG_ONDISK_SAME_DIR | fa.IO_FLAG_READ_ONLY)
        except RuntimeError as err:
            raise IndexError_(f"faiss cannot read {path} ({F._first_line(err)})") from None
        return cls(index, path, None if bounds is None else (int(bounds[0]), int(bounds[1])))


class Parts:
    """The trained empty header plus the segments, searched as one IVF (``view``)."""

    def __init__(self, header, segments: list[Segment], removed=None) -> None:
        self.header = header
        self.segments = segments
        #: tombstones: sorted ids of removed tiles still stored in a segment
        self.removed = np.zeros(0, np.int64) if removed is None else np.asarray(removed, np.int64)
        self._dead_bits: np.ndarray | None = None
        self._view = None
        self._keep: list[Any] = []

    @property
    def ntotal(self) -> int:
        """Vectors stored, tombstoned ones included."""
        return int(sum(s.index.ntotal for s in self.segments))

    def dead_bitmap(self) -> np.ndarray:
        """The tombstones as a bitmap for search-time filtering (cached; 1 bit per id)."""
        if self._dead_bits is None:
            self._dead_bits = F.bitmap(self.removed)
        return self._dead_bits

    def remove(self, ids: np.ndarray, *, compact: bool = False) -> None:
        """Remove tiles: out of the in-memory segment for real, else as tombstones; segments
        left without a live tile are dropped (with their tombstones). ``compact``: segments
        holding tombstones are rewritten without them at the next :meth:`save`."""
        fa = F.faiss()
        ids = np.unique(np.asarray(ids, np.int64))
        dead = np.union1d(self.removed, ids)
        kept = []
        for seg in self.segments:
            if seg.path is None:  # added since the last save: in memory, removed for real
                dead = dead[~seg.holds(dead)]
                seg.index.remove_ids(fa.IDSelectorBatch(ids))
                seg.bounds = None
                if seg.index.ntotal:
                    kept.append(seg)
                continue
            mine = seg.holds(dead)
            if mine.sum() == seg.index.ntotal:  # every tile removed: drop the segment whole
                log.info("dropping segment %s: all its tiles are removed", seg.path.stem)
                dead = dead[~mine]
                continue
            seg.compact = seg.compact or (compact and bool(mine.any()))
            kept.append(seg)
        self.segments, self.removed, self._view, self._dead_bits = kept, dead, None, None

    @property
    def view(self):
        """The searchable index: the only segment, or the header over stacked lists."""
        if self._view is None:
            fa = F.faiss()
            if not self.segments:  # every tile removed
                self._view = fa.clone_index(self.header)
            elif len(self.segments) == 1:
                self._view = self.segments[0].index
            else:
                vec = fa.InvertedListsPtrVector()
                for s in self.segments:
                    vec.push_back(fa.extract_index_ivf(s.index).invlists)
                stack = fa.HStackInvertedLists(vec.size(), vec.data())
                view = fa.clone_index(self.header)
                ivf = fa.extract_index_ivf(view)
                ivf.replace_invlists(stack, True)
                stack.this.disown()
                view.ntotal = ivf.ntotal = self.ntotal
                self._keep = [vec]
                self._view = view
        return self._view

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors with the trained quantizer, into a segment kept in memory until saved."""
        fa = F.faiss()
        if not self.segments or self.segments[-1].path is not None:
            self.segments.append(Segment(fa.clone_index(self.header)))
        self.segments[-1].index.add_with_ids(vectors, ids)
        self._view = None

    def save(self, folder: Path) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        """Write header, segments and tombstones into ``folder``.

        Returns the file names written, the manifest entries (``segments``,
        ``segment_bounds``, ``n_removed``) and the known checksum records of linked files.
        """
        from mmpath.index._tombstones import rewrite

        fa = F.faiss()
        fa.write_index(self.header, str(folder / HEADER))
        names, stems, bounds, known = [HEADER], [], {}, {}
        used = {s.path.stem for s in self.segments if s.path is not None}
        fresh = (SEGMENT.format(i) for i in itertools.count())
        removed = self.removed
        for seg in self.segments:
            if seg.path is not None and seg.compact and len(removed):
                # rewritten without its tombstoned tiles, into a segment of a new name
                mine = seg.holds(removed)
                stem = folder / next(n for n in fresh if n not in used)
                b = rewrite(seg, removed[mine], self.header, stem)
                removed = removed[~mine]
                if b is None:  # nothing live left
                    for suffix in (".faiss", ".ivfdata"):
                        stem.with_suffix(suffix).unlink()
                    continue
                bounds[stem.name] = list(b)
            elif seg.path is not None:  # immutable: keep its name (the .faiss file records it)
                stem = folder / seg.path.stem
                for suffix in (".faiss", ".ivfdata"):
                    _link_or_copy(seg.path.with_suffix(suffix), stem.with_suffix(suffix))
                    rec = (seg.records or {}).get(stem.name + suffix)
                    if rec and stem.with_suffix(suffix).stat().st_size == rec.get("bytes"):
                        known[stem.name + suffix] = rec
            else:
                stem = folder / next(n for n in fresh if n not in used)
                lists = fa.extract_index_ivf(seg.index).invlists
                out = merge_into(self.header, [lists], stem.with_suffix(".ivfdata"))
                fa.write_index(out, str(stem.with_suffix(".faiss")))
                del out
            names += [stem.with_suffix(".faiss").name, stem.with_suffix(".ivfdata").name]
            stems.append(stem.name)
            if stem.name not in bounds and (seg.bounds is not None or seg.path is None):
                b = seg.id_bounds()  # in memory: cheap to read
                if b is not None:
                    bounds[stem.name] = [int(b[0]), int(b[1])]
        if len(removed):
            np.save(folder / TOMBSTONES, removed, allow_pickle=False)
            names.append(TOMBSTONES)
        entries = {"segments": stems, "segment_bounds": bounds, "n_removed": len(removed)}
        return names, entries, known

    @classmethod
    def load(
        cls, folder: Path, segments: list[str], bounds=None, n_removed: int = 0, files=None
    ) -> Parts:
        """Read the header, the named segments (their lists stay on disk, memory-mapped) and
        the tombstones; ``files`` are the manifest's checksum records."""
        from mmpath.index._tombstones import read_tombstones

        fa = F.faiss()
        header = fa.read_index(str(folder / HEADER))
        bounds = bounds if isinstance(bounds, dict) else {}
        segs = [Segment.read(folder / f"{name}.faiss", bounds.get(name)) for name in segments]
        for seg in segs:
            seg.records = {
                seg.path.stem + x: (files or {}).get(seg.path.stem + x)
                for x in (".faiss", ".ivfdata")
            }
        removed = read_tombstones(folder / TOMBSTONES, int(n_removed)) if n_removed else None
        return cls(header, segs, removed)


@contextlib.contextmanager
def _quiet():
    """Silence faiss' C++ notes ("resizing ...", "updating ondisk filename ..."), printed on
    stdout/stderr during normal operation. Errors still raise with their message."""
    import ctypes
    import sys

    try:
        libc = ctypes.CDLL(None)
        saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    except OSError:  # pragma: no cover - no libc or no standard streams
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        with open(os.devnull, "w") as null:
            for fd, _ in saved:
                os.dup2(null.fileno(), fd)
            yield
            libc.fflush(None)
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
