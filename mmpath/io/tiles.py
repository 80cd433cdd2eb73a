"""Reading tile pixels for a tile table: batches, a DataLoader-ready dataset, workers.

Nothing here imports torch. :class:`TileDataset` is a plain map-style dataset (``__len__`` +
``__getitem__``), which ``torch.utils.data.DataLoader`` accepts as is; each worker process
opens its own slide handles lazily (openslide handles must not cross processes).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from PIL import Image

from mmpath import _keys as K
from mmpath._fork import worker_start_method
from mmpath.errors import DataError, SlideError, TileReadError
from mmpath.io import _prov
from mmpath.io.slide import Slide, open_slide

log = logging.getLogger(__name__)

__all__ = ["read_tiles", "TileDataset", "iter_tiles", "open_slide_from", "TileReader"]

Remap = Mapping[str, str] | Callable[[str], str] | None


def _remap_path(path: str, remap: Remap) -> str:
    if remap is None:
        return path
    if callable(remap):
        return remap(path)
    for old, new in remap.items():
        if path.startswith(old):
            return new + path[len(old) :]
    return path


def open_slide_from(adata, slide_id: str | None = None, *, remap: Remap = None) -> Slide:
    """Reopen a slide from a tile table's provenance.

    Parameters
    ----------
    adata
        A tile table made by :func:`mmpath.pp.tile` (or a cohort from :func:`mmpath.io.concat`).
    slide_id
        Which slide; may be omitted when the table holds one.
    remap
        ``{old_prefix: new_prefix}`` or a function, for archives that moved.

    Example
    -------
    >>> slide = mm.io.open_slide_from(tiles, remap={"/old/archive": "/mnt/archive"})
    """
    if slide_id is None:
        ids = _prov.slide_ids(adata) if adata.n_obs else list(_prov.root(adata)[K.UNS_SLIDES])
        if len(ids) != 1:
            raise DataError(f"the table holds {len(ids)} slides; pass slide_id= (one of {ids[:5]})")
        slide_id = ids[0]
    rec = _prov.slide_record(adata, slide_id)
    path = rec.get("path")
    if not path:
        raise DataError(
            f"slide {slide_id!r} was an in-memory image with no file; pass slide= explicitly"
        )
    path = _remap_path(path, remap)
    mpp = rec.get("mpp") if rec.get("mpp_source") in ("override", "estimate") else None
    return open_slide(path, mpp=mpp, slide_id=slide_id, backend=_backend(rec))


def _backend(rec: Mapping[str, Any]) -> str | None:
    """The reader to reopen a slide with: tifffile is kept; openslide is re-checked on open."""
    return "tifffile" if rec.get("backend") == "tifffile" else None


def _check_reachable(slide_id: str, path: str | None, remap: Remap) -> None:
    """A clear error when a table's slide cannot be reopened (in-memory, or moved away)."""
    if path is None:
        raise DataError(
            f"slide {slide_id!r} was an in-memory image with no file; pass slide= explicitly"
        )
    if not os.path.exists(path):
        where, hint = (
            ("after remap", "check remap=")
            if remap
            else ("recorded at tiling", "if the slides moved, pass remap={OLD: NEW}")
        )
        raise SlideError(
            f"slide {slide_id!r}: {path!r} ({where}) does not exist; {hint} (CLI: --remap OLD=NEW)"
        )


@dataclass(frozen=True)
class _SlideSpec:
    path: str | None
    mpp_override: float | None
    level: int
    read_size: int
    size: int
    backend: str | None = None


class TileReader:
    """Reads tile ``i`` of a table; picklable, opening slide handles lazily per process.

    Parameters
    ----------
    adata
        The tile table.
    slide
        An open slide to use instead of reopening (required for in-memory slides).
    remap
        Path remap for moved archives (see :func:`open_slide_from`).
    """

    def __init__(self, adata, *, slide: Slide | None = None, remap: Remap = None) -> None:
        if adata.n_obs:
            _prov.require_tile_table(adata)
        ids = _prov.slide_ids(adata) if adata.n_obs else []
        self.specs: dict[str, _SlideSpec] = {}
        sizes = set()
        for sid in ids:
            rec = _prov.slide_record(adata, sid)
            t = _prov.tiling(adata, sid)
            path = _remap_path(rec["path"], remap) if rec.get("path") else None
            mpp = rec.get("mpp") if rec.get("mpp_source") in ("override", "estimate") else None
            self.specs[sid] = _SlideSpec(
                path, mpp, t["level"], t["read_size"], t["size"], _backend(rec)
            )
            sizes.add(int(t["size"]))
        if len(sizes) > 1:
            raise DataError(
                f"the table mixes tile sizes {sorted(sizes)}; read each slide's tiles separately"
            )
        self.size = sizes.pop() if sizes else 0
        if slide is not None and len(ids) > 1:
            raise DataError("slide= was given but the table holds several slides; omit slide=")
        if slide is not None and ids and slide.slide_id not in ids:
            raise SlideError(f"slide {slide.slide_id!r} is not in this table (slides: {ids})")
        if slide is None:
            # Fail here, in the caller's process, with one line: inside a DataLoader worker the
            # same error would come back wrapped in the worker's traceback.
            for sid, spec in self.specs.items():
                _check_reachable(sid, spec.path, remap)
        self._given = slide
        self.slide_ids = np.asarray(adata.obs[K.SLIDE_ID].astype(str)) if ids else np.array([])
        self.xy = _prov.tile_xy(adata) if ids else np.zeros((0, 2), np.int64)
        self.names = np.asarray(adata.obs_names)
        self._pid = None
        self._open: dict[str, Slide] = {}

    def __len__(self) -> int:
        return len(self.xy)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}
        state["_pid"] = None
        return state

    def _slide(self, sid: str) -> Slide:
        if self._pid != os.getpid():  # forked or unpickled: handles are per process
            self._open, self._pid = {}, os.getpid()
        if self._given is not None:
            return self._given
        if sid not in self._open:
            spec = self.specs[sid]
            if spec.path is None:
                raise DataError(
                    f"slide {sid!r} was an in-memory image with no file; pass slide= explicitly"
                )
            self._open[sid] = open_slide(
                spec.path, mpp=spec.mpp_override, slide_id=sid, backend=spec.backend
            )
        return self._open[sid]

    def read(self, i: int) -> np.ndarray:
        """Tile ``i`` as ``(size, size, 3)`` uint8; raises TileReadError on a damaged region."""
        img = self._read_view(i)
        return img if img.flags.writeable else img.copy()

    def _read_view(self, i: int) -> np.ndarray:
        # May be read-only: batch readers copy into their output anyway, so skip a copy.
        sid = self.slide_ids[i]
        spec = self.specs[sid]
        x, y = self.xy[i]
        img = self._slide(sid)._read_view((int(x), int(y)), spec.level, (spec.read_size,) * 2)
        if spec.read_size != spec.size:
            img = np.asarray(
                Image.fromarray(img).resize((spec.size, spec.size), Image.Resampling.BILINEAR)
            )
        return img

    def read_or_blank(self, i: int) -> tuple[np.ndarray, bool]:
        """Tile ``i`` and True, or a white tile and False when the region is damaged."""
        return self._guarded(self.read, i)

    def _guarded(self, read: Callable[[int], np.ndarray], i: int) -> tuple[np.ndarray, bool]:
        try:
            return read(i), True
        except TileReadError as err:
            log.warning("%s: %s", self.names[i], err)
            return np.full((self.size, self.size, 3), 255, np.uint8), False


def _warn_failed(names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        warnings.warn(
            f"{len(names)} tile(s) could not be read (damaged regions) and were returned white: "
            f"{shown}",
            stacklevel=3,
        )


def read_tiles(
    slide: Slide | None,
    tiles,
    *,
    on_error: str = "fill",
    remap: Remap = None,
) -> np.ndarray:
    """Read the pixels of every row of ``tiles``.

    Parameters
    ----------
    slide
        The open slide, or ``None`` to reopen slides from the table's provenance (works for
        cohort tables).
    tiles
        A tile table (or a slice of one).
    on_error
        ``"fill"``: a damaged region gives a white tile and a warning; ``"raise"``: raise
        :class:`~mmpath.errors.TileReadError`.
    remap
        Path remap for moved archives.

    Returns
    -------
    ``uint8`` array ``(n, size, size, 3)``.

    Example
    -------
    >>> batch = mm.io.read_tiles(slide, tiles[:64])
    """
    if on_error not in ("fill", "raise"):
        raise ValueError("on_error must be 'fill' or 'raise'")
    reader = TileReader(tiles, slide=slide, remap=remap)
    out = np.empty((len(reader), reader.size, reader.size, 3), np.uint8)
    if on_error == "raise":
        read = reader._read_view
        for i in range(len(reader)):
            out[i] = read(i)
        return out
    _warn_failed([str(reader.names[i]) for i in _fill_rows(reader, out, 0, len(reader))])
    return out


def _fill_rows(reader: TileReader, out: np.ndarray, start: int, stop: int) -> list[int]:
    """Read tiles ``start:stop`` into ``out[0:]``, one copy each (the reader may hand back a
    read-only view of a decoded tile); damaged regions become white. Returns their indices.

    This loop is the per-tile overhead of every batch read, so it stays bare: no tuple per
    tile, no extra copy (see ``tools/bench/bench_tiling.py``, ``readers``).
    """
    read = reader._read_view
    failed = []
    for j, i in enumerate(range(start, stop)):
        try:
            out[j] = read(i)
        except TileReadError as err:
            log.warning("%s: %s", reader.names[i], err)
            out[j] = 255
            failed.append(i)
    return failed


class TileDataset:
    """Map-style dataset over a tile table, for ``torch.utils.data.DataLoader``.

    Items are ``(image, index)`` where ``image`` is ``transform(uint8 HWC array)`` (the array
    itself without a transform). Damaged regions come back white and are logged; their
    indices are in :attr:`failed` of the process that read them.

    Parameters
    ----------
    tiles
        The tile table.
    slide
        An open slide (needed for in-memory slides), or ``None`` to reopen from provenance.
    transform
        Called on each uint8 ``(h, w, 3)`` array.
    remap
        Path remap for moved archives.
    """

    def __init__(self, tiles, *, slide: Slide | None = None, transform=None, remap: Remap = None):
        self.reader = TileReader(tiles, slide=slide, remap=remap)
        self.transform = transform
        self.failed: list[int] = []

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        img, ok = self.reader.read_or_blank(int(i))
        if not ok:
            self.failed.append(int(i))
        return (self.transform(img) if self.transform is not None else img), int(i)


_WORKER_READER: TileReader | None = None
_WORKER_SLOTS: np.ndarray | None = None


def _init_worker(reader: TileReader, slots: np.ndarray | None = None) -> None:
    global _WORKER_READER, _WORKER_SLOTS
    _WORKER_READER = reader
    _WORKER_SLOTS = slots


def _fill(out: np.ndarray, start: int, stop: int) -> list[int]:
    reader = _WORKER_READER
    assert reader is not None
    return _fill_rows(reader, out, start, stop)


def _read_chunk(bounds: tuple[int, int]) -> tuple[int, np.ndarray, list[int]]:
    reader = _WORKER_READER
    assert reader is not None
    start, stop = bounds
    out = np.empty((stop - start, reader.size, reader.size, 3), np.uint8)
    return start, out, _fill(out, start, stop)


def _read_chunk_shared(task: tuple[int, int, int]) -> tuple[int, int, int, list[int]]:
    """Read tiles ``start:stop`` straight into shared slot ``slot`` (no pickled pixels)."""
    slot, start, stop = task
    assert _WORKER_SLOTS is not None
    return slot, start, stop, _fill(_WORKER_SLOTS[slot], start, stop)


def _iter_shared(
    ctx, reader: TileReader, bounds: list, num_workers: int, batch_size: int, failed: list[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Workers write batches into an anonymous shared mapping inherited through fork.

    Sending each batch back through the pool's pipe pickles it twice (worker and parent),
    which cost about a fifth of a tile read and kept two workers well under 2x; here only
    the parent's final copy remains.
    """
    n_slots = 2 * num_workers
    shape = (n_slots, batch_size, reader.size, reader.size, 3)
    shm = mmap.mmap(-1, int(np.prod(shape)))
    slots = np.frombuffer(shm, np.uint8).reshape(shape)
    try:
        with ctx.Pool(num_workers, initializer=_init_worker, initargs=(reader, slots)) as pool:
            todo = iter(bounds)
            pending = deque()
            for slot, b in zip(range(n_slots), todo, strict=False):
                pending.append(pool.apply_async(_read_chunk_shared, ((slot, *b),)))
            while pending:
                slot, start, stop, bad = pending.popleft().get()
                batch = slots[slot, : stop - start].copy()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.apply_async(_read_chunk_shared, ((slot, *nxt),)))
                failed += bad
                yield np.arange(start, stop), batch
    finally:
        del slots
        # BufferError: a view is still referenced somewhere; GC frees the mapping then.
        with contextlib.suppress(BufferError):
            shm.close()


def iter_tiles(
    tiles,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    slide: Slide | None = None,
    remap: Remap = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream a table's tiles in order as ``(indices, uint8 batch)``, reading in parallel.

    Memory stays bounded: at most ``2 * num_workers`` batches are in flight.

    Parameters
    ----------
    tiles
        The tile table (one slide or a cohort).
    batch_size
        Tiles per yielded batch.
    num_workers
        Reader processes; 0 reads in this process.
    slide
        An open slide (required for in-memory slides, which always read in-process).
    remap
        Path remap for moved archives.

    Example
    -------
    >>> for idx, batch in mm.io.iter_tiles(tiles, batch_size=128, num_workers=2):
    ...     feats[idx] = model(batch)
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be > 0")
    reader = TileReader(tiles, slide=slide, remap=remap)
    n = len(reader)
    bounds = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    failed: list[int] = []
    in_memory = slide is not None and slide.path is None
    if num_workers <= 0 or in_memory or n == 0:
        _init_worker(reader)
        for b in bounds:
            start, batch, bad = _read_chunk(b)
            failed += bad
            yield np.arange(start, start + len(batch)), batch
    elif (method := worker_start_method()) == "fork":
        # fork shares the already-built reader and the shared slots; handles reopen per
        # process (see TileReader). Not when other libraries' threads make fork unsafe.
        ctx = mp.get_context("fork")
        yield from _iter_shared(ctx, reader, bounds, num_workers, batch_size, failed)
    else:
        ctx = mp.get_context(method)
        with ctx.Pool(num_workers, initializer=_init_worker, initargs=(reader,)) as pool:
            todo = iter(bounds)
            pending = deque(
                pool.apply_async(_read_chunk, (b,)) for b in islice(todo, 2 * num_workers)
            )
            while pending:
                start, batch, bad = pending.popleft().get()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.apply_async(_read_chunk, (nxt,)))
                failed += bad
                yield np.arange(start, start + len(batch)), batch
    _warn_failed([str(reader.names[i]) for i in failed])
