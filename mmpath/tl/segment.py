"""Whole-slide segmentation: tiled inference with overlap blending, masks, polygons, areas.

:func:`segment_slide` runs a segmentation head over a whole slide at the model's mpp (or a
chosen one), blends overlapping tiles so there are no seams (see :mod:`mmpath.tl._blend`: the
blend weights are a partition of unity, 0 within ``margin`` px of an inner tile edge), and
returns the label mask at ``mask_mpp`` (area-averaged class probabilities, then argmax).

Slide reading runs in a background thread and blending in another, both overlapping the
model's forward pass, so inference runs at (nearly) the model's own speed; finished rows
leave the band accumulator as soon as no later tile touches them, so memory stays
``O(tile * width)`` plus the output mask.

:func:`segment` does this for every slide of a tile table: per-tile class fractions go into
``obs["<key>_<class>_frac"]``, per-slide areas into ``uns["mmpath"]["segment"][<key>]`` (and
:func:`area_table` turns them into a slide table), masks and QuPath GeoJSON into ``out_dir``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpath import _keys as K
from mmpath.errors import DataError, ModelError, SlideError
from mmpath.io import _prov
from mmpath.io._mpp import check_mpp
from mmpath.tl._blend import BandAccumulator, RowReducer, grid_starts, run_pipeline, tile_window

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["SegmentationResult", "segment_slide", "segment", "area_table", "load_head"]

MASK_FORMATS = ("png", "tiff", "geojson")


def load_head(model: Any, kind: str):
    """A :class:`~mmpath.models.heads.TrainedHead` from a folder path or an existing one."""
    from mmpath.models.heads import TrainedHead, load_trained_head

    if isinstance(model, TrainedHead):
        if model.kind != kind:
            raise ModelError(f"the given model is a {model.kind!r} head, not a {kind!r} head")
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_trained_head(model, kind=kind)
    raise ModelError(
        f"model must be a model folder or a TrainedHead, got {type(model).__name__}; wrap a "
        "module with mmpath.models.heads.TrainedHead"
    )


@dataclass
class SegmentationResult:
    """A whole-slide label mask and what it means.

    Attributes
    ----------
    mask
        ``(H, W)`` uint8 labels at ``mpp``.
    class_names
        Name of each label value.
    downsample
        Level-0 pixels per mask pixel (mask pixel ``(i, j)`` covers level-0
        ``[j * downsample, (j + 1) * downsample)`` horizontally).
    mpp
        µm per mask pixel (``None`` if the slide has no mpp).
    probs
        ``(C, H, W)`` float32 class probabilities, when asked for.
    """

    mask: np.ndarray
    class_names: tuple[str, ...]
    downsample: float
    mpp: float | None
    slide_id: str
    probs: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def area_stats(self) -> dict[str, dict[str, float]]:
        """Per class: ``pixels``, ``fraction`` of the slide and ``area_mm2`` (if mpp known)."""
        counts = np.bincount(self.mask.ravel(), minlength=len(self.class_names))
        total = max(1, int(self.mask.size))
        out = {}
        for c, name in enumerate(self.class_names):
            row = {"pixels": int(counts[c]), "fraction": float(counts[c] / total)}
            if self.mpp is not None:
                row["area_mm2"] = float(counts[c] * (self.mpp * 1e-3) ** 2)
            out[name] = row
        return out

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        stem: str | None = None,
        formats: Sequence[str] = ("png", "geojson"),
    ) -> list[Path]:
        """Write the mask as ``<stem>.png`` / ``.tif`` and polygons as ``<stem>.geojson``."""
        from mmpath.io.masks import (
            mask_to_features,
            write_geojson,
            write_mask_png,
            write_mask_tiff,
        )

        bad = sorted(set(formats) - set(MASK_FORMATS))
        if bad:
            raise DataError(f"unknown mask format(s) {bad}; choose from {list(MASK_FORMATS)}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from mmpath._names import check_name

        stem = check_name(stem or self.slide_id, what="file stem (slide id)")
        paths = []
        if "png" in formats:
            paths.append(write_mask_png(self.mask, out / f"{stem}.png", len(self.class_names)))
        if "tiff" in formats:
            paths.append(write_mask_tiff(self.mask, out / f"{stem}.tif", self.mpp))
        if "geojson" in formats:
            feats = mask_to_features(self.mask, self.class_names, downsample=self.downsample)
            paths.append(write_geojson(feats, out / f"{stem}.geojson"))
        return paths


def _predictor(head, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from mmpath.models.transform import to_tensor

    model = head.model.to(device).eval()
    proba = getattr(model, "predict_proba", None)

    def run(batch: np.ndarray) -> np.ndarray:
        x = to_tensor(batch, head.mean, head.std, device=device)
        with torch.inference_mode():
            p = proba(x) if proba is not None else torch.softmax(model(x), 1)
        return p.float().cpu().numpy()

    return run


class _Reader:
    """Reads tiles at prediction resolution (``scale`` level-0 px per prediction px)."""

    def __init__(self, slide, tile: int, mpp: float | None) -> None:
        from mmpath.pp.tiling import plan_read

        if mpp is not None:
            slide.require_mpp()
        W0, H0 = slide.dimensions
        side = min(W0, H0)
        probe = tile
        # plan_read refuses tiles larger than the slide; plan a smaller one at the same mpp.
        while True:
            try:
                plan = plan_read(slide, probe, mpp=mpp)
                break
            except SlideError:
                if probe <= 1:  # a slide thinner than a tile: predictions are padded
                    raise
                probe //= 2
        self.level = plan["level"]
        self.lds = plan["level_downsample"]
        ratio = plan["read_size"] / probe
        self.read_size = max(1, int(round(tile * ratio)))
        self.scale = self.read_size * self.lds / tile  # level-0 px per prediction px
        self.slide, self.tile = slide, tile
        self.width = int(W0 // self.scale)
        self.height = int(H0 // self.scale)
        if self.width < 1 or self.height < 1 or side < 1:
            raise SlideError(f"slide {slide.slide_id!r} is too small for mpp={mpp}")

    def read(self, x: int, y: int, pad: int = 0) -> np.ndarray:
        """The ``tile`` px tile at prediction pixel ``(x, y)``, which may reach past the image
        (the border context of ``segment_slide``): up to ``pad`` px beyond an edge are the
        image mirrored there (so a model sees tissue-like context, not a wall), farther is
        white (a slide smaller than a tile)."""
        T = self.tile
        ix0, iy0 = max(x, 0), max(y, 0)
        ix1, iy1 = min(x + T, self.width), min(y + T, self.height)
        if ix1 <= ix0 or iy1 <= iy0:
            return np.full((T, T, 3), 255, np.uint8)
        core = self._read_box(ix0, iy0, ix1 - ix0, iy1 - iy0)
        return _pad_tile(core, (iy0 - y, y + T - iy1), (ix0 - x, x + T - ix1), pad)

    def _read_box(self, ix: int, iy: int, w: int, h: int) -> np.ndarray:
        """Image box ``(ix, iy, w, h)`` in prediction pixels, as ``(h, w, 3)`` uint8."""
        from PIL import Image

        W0, H0 = self.slide.dimensions
        x0, y0 = int(round(ix * self.scale)), int(round(iy * self.scale))
        rw = max(1, min(int(round(w * self.scale / self.lds)), int((W0 - x0) // self.lds)))
        rh = max(1, min(int(round(h * self.scale / self.lds)), int((H0 - y0) // self.lds)))
        img = self.slide.read_region((x0, y0), self.level, (rw, rh))
        if (rw, rh) != (w, h):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
        return img


def _pad_tile(a: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], mirror: int):
    """``a`` padded by ``rows``/``cols`` (before, after): mirrored up to ``mirror`` px, white
    beyond."""
    h, w = a.shape[:2]
    (top, bottom), (left, right) = rows, cols
    if not (top or bottom or left or right):
        return a
    m = [min(n, mirror, size - 1) for n, size in ((top, h), (bottom, h), (left, w), (right, w))]
    a = np.pad(a, ((m[0], m[1]), (m[2], m[3]), (0, 0)), mode="reflect")
    widths = ((top - m[0], bottom - m[1]), (left - m[2], right - m[3]), (0, 0))
    return np.pad(a, widths, constant_values=255)


def segment_slide(
    slide,
    model: Any,
    *,
    mpp: float | None = None,
    mask_mpp: float | None = None,
    overlap: int | None = None,
    margin: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    return_probs: bool = False,
    progress: bool = False,
) -> SegmentationResult:
    """Segment a whole slide by tiled inference with overlap blending.

    Parameters
    ----------
    slide
        An open :class:`~mmpath.io.Slide`.
    model
        A segmentation model folder (``mmpath train seg``) or a ``TrainedHead``.
    mpp
        µm/px to run the model at; default: the mpp it was trained at (native resolution when
        that or the slide's mpp is unknown).
    mask_mpp
        µm/px of the returned mask (>= ``mpp``; probabilities are area-averaged).
    overlap
        Overlap between neighbouring tiles in pixels (default: a quarter of the tile).
    margin
        Pixels at each inner tile edge given zero weight (default: a quarter of ``overlap``);
        choose at least the model's receptive-field radius for exact results.
    batch_size
        Tiles per forward pass.
    device
        Torch device.
    return_probs
        Keep the class probabilities at ``mask_mpp`` in :attr:`SegmentationResult.probs`.
    progress
        Show a progress bar.

    Returns
    -------
    :class:`SegmentationResult`.

    Example
    -------
    >>> res = mm.tl.segment_slide(slide, "runs/seg1", mask_mpp=4.0)
    >>> res.save("seg/", formats=("png", "geojson"))
    """
    what = f"slide {slide.slide_id!r}"
    try:  # the one mpp rule; a bad argument stays a DataError here
        mpp = check_mpp(mpp, what=what, api="mpp=", cli="--mpp", target=True)
        mask_mpp = check_mpp(mask_mpp, what=what, api="mask_mpp=", cli="--mask-mpp", target=True)
    except SlideError as err:
        raise DataError(str(err)) from None
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1 tile, got {batch_size}")
    head = load_head(model, "seg")
    T = int(head.tile_size)
    if mpp is None and head.mpp is not None and slide.mpp is not None:
        mpp = float(head.mpp)
    elif mpp is None and head.mpp is not None:  # the mpp rule: say what is assumed
        from mmpath._settings import spell

        log.warning(
            "slide %r has no mpp: segmenting at its native resolution, not at the %.3g µm/px "
            "the model was trained at; give the slide's mpp with %s",
            slide.slide_id,
            head.mpp,
            spell("open_slide(path, mpp=...)", "--slide-mpp"),
        )
    overlap = T // 4 if overlap is None else int(overlap)
    margin = overlap // 4 if margin is None else int(margin)
    if not 0 <= overlap < T:
        raise SlideError(f"overlap must be within 0..{T - 1} px, got {overlap}")
    if overlap and overlap <= 2 * margin:
        raise SlideError(f"overlap ({overlap}) must exceed 2 * margin ({2 * margin})")
    reader = _Reader(slide, T, mpp)
    W, H = reader.width, reader.height
    infer_mpp = slide.mpp * reader.scale if slide.mpp is not None else None
    factor = 1.0
    if mask_mpp is not None:
        if infer_mpp is None:
            slide.require_mpp()  # one message naming how to give the slide's mpp
        factor = max(1.0, float(mask_mpp) / infer_mpp)
    names = tuple(head.class_names) or tuple(str(c) for c in range(_n_classes(head)))
    C = len(names)
    # Border context: the grid covers the image grown by `pad` px on every side (mirrored
    # pixels), so the image's first/last rows and columns lie `margin` px inside a tile, as
    # every interior pixel does, instead of on a tile edge where the model sees padding.
    pad = margin if T - 2 * margin >= 1 else 0
    xs = [s - pad for s in grid_starts(W + 2 * pad, T, T - overlap)]
    ys = [s - pad for s in grid_starts(H + 2 * pad, T, T - overlap)]
    jobs = [(x, y) for y in ys for x in xs]
    reducer = RowReducer(W, H, factor)
    mask = np.zeros((reducer.out_h, reducer.out_w), np.uint8)
    probs_out = np.zeros((C, reducer.out_h, reducer.out_w), np.float32) if return_probs else None
    acc = BandAccumulator(W + 2 * pad, H + 2 * pad, C, T)  # on the grown canvas
    windows: dict[tuple[bool, ...], np.ndarray] = {}

    def emit(blocks) -> None:
        for y0p, block in blocks:  # grown-canvas rows: crop back to the image
            lo, hi = max(0, pad - y0p), min(block.shape[1], pad + H - y0p)
            if hi <= lo:
                continue
            block = block[:, lo:hi, pad : pad + W]
            for r0, red in reducer.push(y0p + lo - pad, block):
                mask[r0 : r0 + red.shape[1]] = red.argmax(0).astype(np.uint8)
                if probs_out is not None:
                    probs_out[:, r0 : r0 + red.shape[1]] = red

    def blend(batch_jobs, preds) -> None:
        for (x, y), p in zip(batch_jobs, preds, strict=True):
            if p.shape[0] != C:
                raise ModelError(f"the model returned {p.shape[0]} classes, expected {C}")
            edges = (x == xs[0], x == xs[-1], y == ys[0], y == ys[-1])
            if edges not in windows:
                windows[edges] = tile_window(T, overlap, margin, edges=edges)
            if x == xs[0] and y != ys[0]:  # a new tile row starts: rows above it are final
                emit(acc.finish_above(y + pad))
            acc.add(p, x + pad, y + pad, windows[edges])

    predict = _predictor(head, device)
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    run_pipeline(batches, lambda x, y: reader.read(x, y, pad), predict, blend, progress=progress)
    emit(acc.finish_above(H + 2 * pad))
    mask_ds = reader.scale * W / reducer.out_w
    return SegmentationResult(
        mask=mask,
        class_names=names,
        downsample=float(mask_ds),
        mpp=slide.mpp * mask_ds if slide.mpp is not None else None,
        slide_id=slide.slide_id,
        probs=probs_out,
        info={
            "infer_mpp": infer_mpp,
            "tile_size": T,
            "overlap": overlap,
            "margin": margin,
            "border_context": pad,
            "n_tiles": len(jobs),
            "model": head.path or head.name,
        },
    )


def _n_classes(head) -> int:
    n = getattr(head.model, "n_prob_classes", None)
    if n is None:
        raise ModelError("the model has no class names; set TrainedHead.class_names")
    return int(n)


def _box_fractions(mask: np.ndarray, n: int, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each class inside boxes ``(k, 4)`` = (x0, y0, x1, y1) in mask pixels."""
    H, W = mask.shape
    x0 = np.clip(boxes[:, 0], 0, W - 1)
    y0 = np.clip(boxes[:, 1], 0, H - 1)
    x1 = np.clip(np.maximum(boxes[:, 2], x0 + 1), 1, W)
    y1 = np.clip(np.maximum(boxes[:, 3], y0 + 1), 1, H)
    area = (x1 - x0) * (y1 - y0)
    out = np.zeros((len(boxes), n), np.float32)
    for c in range(n):
        ii = np.zeros((H + 1, W + 1), np.int64)
        ii[1:, 1:] = np.cumsum(np.cumsum(mask == c, 0), 1)
        out[:, c] = (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) / area
    return out


def frac_key(key: str, class_name: str) -> str:
    """obs column of a class's per-tile fraction: ``<key>_<class>_frac``."""
    return K.class_column(key, class_name, "frac", layout="slug")


def segment(
    adata,
    model: Any,
    *,
    slide=None,
    key_added: str = K.SEG,
    mpp: float | None = None,
    mask_mpp: float | None = None,
    overlap: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    out_dir: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("png", "geojson"),
    progress: bool = False,
    remap=None,
) -> None:
    """Segment every slide of a tile table; write per-tile fractions and per-slide areas.

    Parameters
    ----------
    adata
        A tile table (one slide or a cohort).
    model
        A segmentation model folder or ``TrainedHead``.
    slide
        The open slide (required for in-memory slides); reopened from provenance otherwise.
    key_added
        Prefix of the obs columns (``<key>_<class>_frac``) and the uns record.
    mpp, mask_mpp, overlap, batch_size, device
        As in :func:`segment_slide`.
    out_dir
        Write ``<slide_id>.<key>.png`` / ``.tif`` / ``.geojson`` here (``formats``).
    progress
        Show a progress bar.
    remap
        Slide path remap for moved archives (see :func:`mmpath.io.open_slide_from`).

    Example
    -------
    >>> mm.tl.segment(tiles, "runs/seg1", mask_mpp=4.0, out_dir="seg/")
    >>> tiles.obs["seg_tumour_frac"].mean()
    """
    from mmpath.io import open_slide_from

    head = load_head(model, "seg")
    ids = _prov.slide_ids(adata)
    if slide is not None and len(ids) > 1:
        raise DataError("slide= was given but the table holds several slides; omit slide=")
    record: dict[str, Any] = {"model": head.path or head.name, "slides": {}}
    fracs: dict[str, np.ndarray] = {}
    for sid in ids:
        s = slide if slide is not None else open_slide_from(adata, sid, remap=remap)
        res = segment_slide(
            s,
            head,
            mpp=mpp,
            mask_mpp=mask_mpp,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        record["classes"] = list(res.class_names)
        record["mask_mpp"] = res.mpp
        rows = np.flatnonzero(adata.obs[K.SLIDE_ID].astype(str).to_numpy() == sid)
        size0 = float(_prov.tiling(adata, sid)["size0"])
        xy = np.stack([adata.obs[K.X].to_numpy()[rows], adata.obs[K.Y].to_numpy()[rows]], 1)
        boxes = np.round(np.concatenate([xy, xy + size0], 1) / res.downsample).astype(np.int64)
        f = _box_fractions(res.mask, len(res.class_names), boxes)
        for c, name in enumerate(res.class_names):
            fracs.setdefault(name, np.full(adata.n_obs, np.nan, np.float32))[rows] = f[:, c]
        record["slides"][sid] = res.area_stats()
        if out_dir is not None:
            res.save(out_dir, stem=f"{sid}.{key_added}", formats=formats)
    for name, col in fracs.items():
        adata.obs[frac_key(key_added, name)] = col
    _prov.record_run(adata, "segment", key_added, record)


def area_table(adata, *, key: str = K.SEG) -> AnnData:
    """Slide table (one row per slide) of the areas :func:`segment` recorded.

    Returns
    -------
    A new AnnData with obs columns ``<class>_fraction`` and ``<class>_area_mm2``.

    Example
    -------
    >>> slides = mm.tl.area_table(tiles)
    >>> slides.obs["tumour_area_mm2"]
    """
    import anndata as ad
    import pandas as pd

    node = _prov.run_record(adata, "segment", key)
    if not node:
        raise DataError(f"the table has no segmentation {key!r}; run mm.tl.segment first")
    rows = {}
    for sid, stats in node["slides"].items():
        row = {}
        for name, st in stats.items():
            row[f"{K.slugify(name)}_fraction"] = st["fraction"]
            if "area_mm2" in st:
                row[f"{K.slugify(name)}_area_mm2"] = st["area_mm2"]
        rows[sid] = row
    obs = pd.DataFrame.from_dict(rows, orient="index")
    obs.index = obs.index.astype(str)
    obs.index.name = K.SLIDE_ID
    table = ad.AnnData(obs=obs)
    known = _prov.plain(_prov.root(adata)[K.UNS_SLIDES])
    slides = {s: known[s] for s in rows if s in known}
    _prov.new_root(table, slides, "segment", key, {k: v for k, v in node.items() if k != "slides"})
    return table
