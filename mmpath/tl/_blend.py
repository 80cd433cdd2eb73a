"""Overlap blending for whole-slide tiled prediction, and the read -> predict -> blend pipeline.

Tiles of side ``T`` are laid every ``S = T - overlap`` pixels; the last row/column is shifted
back to end exactly at the image edge, so every tile lies inside the image.

Each tile's prediction is weighted by a separable window ``w(x) * w(y)``. Along one side that
touches a neighbour, the window is 0 for the outer ``margin`` pixels (where a model with a
receptive field of radius <= ``margin`` sees padding), then ramps linearly to 1 across the rest
of the overlap. Two neighbours' ramps are mirror images over the same pixels, so they sum to
exactly 1 (a partition of unity): for a model with a bounded receptive field the blended output
equals the single-pass output, and for a ViT the tiles fade into each other without seams.
Sides on the image border keep weight 1. Accumulated weights are divided out at the end, so
the shifted last tiles (larger overlaps) still blend to weights that sum to 1 everywhere.

Rows of tiles are processed in order and a band accumulator hands out finished image rows as
soon as no later tile can touch them, so memory is ``O(T * width)``, not ``O(image)``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

__all__ = [
    "grid_starts",
    "window_1d",
    "tile_window",
    "BandAccumulator",
    "RowReducer",
    "run_pipeline",
]


def grid_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile start positions covering ``[0, length)``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def window_1d(tile: int, overlap: int, margin: int, *, lo_edge: bool, hi_edge: bool) -> np.ndarray:
    """One side of the blend window; ``lo_edge``/``hi_edge`` mark image-border sides."""
    w = np.ones(tile, np.float64)
    ramp_len = overlap - 2 * margin
    if overlap <= 0:
        return w
    if ramp_len <= 0:
        raise ValueError(f"overlap ({overlap}) must exceed 2 * margin ({2 * margin})")
    j = np.arange(overlap, dtype=np.float64)
    ramp = np.clip((j - margin + 0.5) / ramp_len, 0.0, 1.0)
    if not lo_edge:
        w[:overlap] = np.minimum(w[:overlap], ramp)
    if not hi_edge:
        w[tile - overlap :] = np.minimum(w[tile - overlap :], ramp[::-1])
    return w


def tile_window(
    tile: int, overlap: int, margin: int, *, edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """2-D window ``(T, T)`` float32; ``edges`` = (left, right, top, bottom) on the border."""
    left, right, top, bottom = edges
    wx = window_1d(tile, overlap, margin, lo_edge=left, hi_edge=right)
    wy = window_1d(tile, overlap, margin, lo_edge=top, hi_edge=bottom)
    return np.outer(wy, wx).astype(np.float32)


class BandAccumulator:
    """Accumulates weighted tile predictions row band by row band.

    Parameters
    ----------
    width, height
        Image size (prediction pixels).
    channels
        Channels per pixel (classes).
    tile
        Tile side.

    ``add(pred, x, y, window)`` adds one tile; ``finish_above(y)`` yields ``(y0, probs)``
    blocks of finished rows ``(C, h, width)`` (weights divided out) above row ``y``.
    """

    def __init__(self, width: int, height: int, channels: int, tile: int) -> None:
        self.width, self.height, self.channels, self.tile = width, height, channels, tile
        self.y0 = 0  # image row of buffer row 0
        self.acc = np.zeros((channels, tile * 2, width), np.float32)
        self.wsum = np.zeros((tile * 2, width), np.float32)

    def _ensure(self, rows: int) -> None:
        if rows > self.acc.shape[1]:
            grow = rows - self.acc.shape[1]
            self.acc = np.concatenate(
                [self.acc, np.zeros((self.channels, grow, self.width), np.float32)], 1
            )
            self.wsum = np.concatenate([self.wsum, np.zeros((grow, self.width), np.float32)], 0)

    def add(self, pred: np.ndarray, x: int, y: int, window: np.ndarray) -> None:
        """Add a tile prediction ``(C, T, T)`` at image position ``(x, y)``."""
        h = min(self.tile, self.height - y)
        w = min(self.tile, self.width - x)
        r = y - self.y0
        if r < 0:
            raise RuntimeError("tiles must arrive in row order")
        self._ensure(r + h)
        win = window[:h, :w]
        self.acc[:, r : r + h, x : x + w] += pred[:, :h, :w] * win
        self.wsum[r : r + h, x : x + w] += win

    def finish_above(self, y: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield finished rows ``[self.y0, y)`` as ``(y0, probs (C, h, width))``."""
        n = min(y, self.height) - self.y0
        if n <= 0:
            return
        wsum = self.wsum[:n]
        if (wsum <= 0).any():
            raise RuntimeError("a pixel received no tile weight; the tile grid has a gap")
        out = self.acc[:, :n] / wsum
        y_start = self.y0
        # shift the buffer up by n rows
        self.acc = np.concatenate([self.acc[:, n:], np.zeros_like(self.acc[:, :n])], 1)
        self.wsum = np.concatenate([self.wsum[n:], np.zeros_like(self.wsum[:n])], 0)
        self.y0 += n
        yield y_start, out


class RowReducer:
    """Area-averages finished probability rows down by ``factor`` (>= 1) to the mask grid.

    Rows arrive in order in blocks; output rows are emitted once all their input rows have
    arrived. Bins are ``[round(i * f), round((i + 1) * f))`` in both directions.
    """

    def __init__(self, width: int, height: int, factor: float) -> None:
        self.f = float(factor)
        self.out_w = max(1, int(round(width / self.f)))
        self.out_h = max(1, int(round(height / self.f)))
        edges_x = np.round(np.arange(self.out_w + 1) * width / self.out_w).astype(np.int64)
        self.col_starts = edges_x[:-1]
        self.col_counts = np.diff(edges_x).astype(np.float32)
        self.row_edges = np.round(np.arange(self.out_h + 1) * height / self.out_h).astype(np.int64)
        self.pending: np.ndarray | None = None
        self.pending_y0 = 0
        self.next_row = 0

    def push(self, y0: int, probs: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Add rows ``probs (C, h, W)`` starting at ``y0``; yield ``(out_row0, (C, k, out_w))``."""
        if self.f == 1.0:
            yield y0, probs
            return
        if self.pending is None:
            self.pending, self.pending_y0 = probs, y0
        else:
            self.pending = np.concatenate([self.pending, probs], 1)
        end = self.pending_y0 + self.pending.shape[1]
        k0 = self.next_row
        k1 = k0
        while k1 < self.out_h and self.row_edges[k1 + 1] <= end:
            k1 += 1
        if k1 == k0:
            return
        rows = self.row_edges[k0 : k1 + 1] - self.pending_y0
        block = self.pending[:, rows[0] : rows[-1]]
        summed = np.add.reduceat(block, rows[:-1] - rows[0], axis=1)
        summed = np.add.reduceat(summed, self.col_starts, axis=2)
        counts = np.diff(rows).astype(np.float32)[:, None] * self.col_counts[None, :]
        self.pending = self.pending[:, rows[-1] :]
        self.pending_y0 += int(rows[-1])
        self.next_row = k1
        yield k0, summed / counts


def run_pipeline(batches, read, predict, blend, *, progress: bool) -> None:
    """Read (thread) -> predict (this thread) -> blend (thread), two batches in flight."""
    from tqdm.auto import tqdm

    read_q: queue.Queue = queue.Queue(maxsize=2)
    blend_q: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            for jobs in batches:
                if stop.is_set():
                    return
                read_q.put((jobs, np.stack([read(x, y) for x, y in jobs])))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            errors.append(err)
        finally:
            read_q.put(None)

    def blender() -> None:
        while True:
            item = blend_q.get()
            if item is None:
                return
            if errors:
                continue
            try:
                blend(*item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                errors.append(err)
                stop.set()

    threads = [
        threading.Thread(target=reader, daemon=True),
        threading.Thread(target=blender, daemon=True),
    ]
    for t in threads:
        t.start()
    bar = tqdm(
        total=sum(len(b) for b in batches), disable=not progress, unit="tile", desc="segment"
    )
    try:
        while True:
            item = read_q.get()
            if item is None or errors:
                break
            jobs, imgs = item
            blend_q.put((jobs, predict(imgs)))
            bar.update(len(jobs))
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()
        while threads[0].is_alive():  # unblock a reader waiting on a full queue
            try:
                read_q.get_nowait()
            except queue.Empty:
                threads[0].join(0.01)
        blend_q.put(None)
        threads[1].join()
        bar.close()
    if errors:
        raise errors[0]
