"""Real labelled H&E: the histolytics HGSC stroma image and its typed nuclei polygons.

``tools/fetch_test_data`` extracts two files from the ``histolytics==0.3.0`` wheel (BSD-3)
into ``$MMPATH_TESTDATA/histolytics``: ``hgsc_stromal_he.jpg`` (1500x1500 RGB) and
``hgsc_stromal_cells.parquet`` (423 nuclei polygons as WKB in ``geometry``, their type in
``class_name``: connective 387, inflammatory 31, neoplastic 5). Nothing else of that package
is used. This module rasterises the polygons into a nucleus mask and cuts it into crops that
are split *spatially* (left half = train, right half = test), so a model is always scored on
tissue it never saw.

Example
-------
>>> data = stromal_nuclei()
>>> train, test = data.split_crops(size=128)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpath.errors import DataError

__all__ = ["StromalNuclei", "stromal_nuclei", "stromal_root"]

IMAGE = "hgsc_stromal_he.jpg"
CELLS = "hgsc_stromal_cells.parquet"


def stromal_root(root: str | Path | None = None) -> Path:
    """The folder holding the two histolytics files (default ``$MMPATH_TESTDATA/histolytics``)."""
    if root is None:
        base = os.environ.get("MMPATH_TESTDATA", "~/.cache/mmpath/testdata")
        root = Path(base).expanduser() / "histolytics"
    root = Path(root)
    for name in (IMAGE, CELLS):
        if not (root / name).is_file():
            raise DataError(
                f"{root / name} not found: run `tools/fetch_test_data histolytics` "
                "(it downloads the histolytics 0.3.0 wheel from PyPI)"
            )
    return root


@dataclass(frozen=True)
class CropSet:
    """Image crops ``(n, s, s, 3)`` uint8 with their nucleus masks ``(n, s, s)`` uint8."""

    images: np.ndarray
    masks: np.ndarray


@dataclass(frozen=True)
class StromalNuclei:
    """The stroma image, its rasterised nuclei and per-nucleus classes."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 1 = nucleus
    instances: np.ndarray  # (H, W) int32, 0 = background, i+1 = nucleus i
    classes: np.ndarray  # (n,) str
    centroids: np.ndarray  # (n, 2) float (x, y)

    def split_crops(self, *, size: int = 128, stride: int | None = None) -> tuple[CropSet, CropSet]:
        """Non-overlapping (or ``stride``-spaced) crops: left half train, right half test."""
        stride = stride or size
        h, w = self.mask.shape
        half = w // 2
        out = []
        for x0, x1 in ((0, half), (half, w)):
            ims, ms = [], []
            for y in range(0, h - size + 1, stride):
                for x in range(x0, x1 - size + 1, stride):
                    ims.append(self.image[y : y + size, x : x + size])
                    ms.append(self.mask[y : y + size, x : x + size])
            out.append(CropSet(np.stack(ims), np.stack(ms)))
        return out[0], out[1]

    def train_val_crops(
        self, *, size: int = 128, stride: int | None = None, val_fraction: float = 0.2
    ) -> tuple[CropSet, CropSet]:
        """Training crops of the left half only, its bottom ``val_fraction`` rows for validation.

        The right half (the test side of :meth:`split_crops`) is never touched, so a model
        selected on this validation set is still scored on unseen tissue. Crops overlap by
        half (``stride = size // 2``) within each part; no crop straddles the two parts.

        Example
        -------
        >>> train, val = data.train_val_crops(size=64)
        """
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        stride = stride or max(1, size // 2)
        h, w = self.mask.shape
        half, cut = w // 2, int(round(h * (1 - val_fraction)))
        out = []
        for y0, y1 in ((0, cut), (cut, h)):
            ys = range(y0, y1 - size + 1, stride)
            xs = range(0, half - size + 1, stride)
            if not len(ys) or not len(xs):
                raise DataError(f"crop size {size} does not fit a part of {y1 - y0}x{half} px")
            ims = [self.image[y : y + size, x : x + size] for y in ys for x in xs]
            ms = [self.mask[y : y + size, x : x + size] for y in ys for x in xs]
            out.append(CropSet(np.stack(ims), np.stack(ms)))
        return out[0], out[1]

    def nucleus_crops(self, *, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """One ``size``-px crop centred on each nucleus (edge-padded): ``(n, s, s, 3)``, classes."""
        r = size // 2
        pad = np.pad(self.image, ((r, r), (r, r), (0, 0)), mode="edge")
        crops = []
        for cx, cy in self.centroids:
            x, y = int(round(cx)), int(round(cy))
            crops.append(pad[y : y + size, x : x + size])
        return np.stack(crops), self.classes


def stromal_nuclei(root: str | Path | None = None) -> StromalNuclei:
    """Load the histolytics stroma image and rasterise its nuclei polygons.

    Parameters
    ----------
    root
        Folder with the two files; default ``$MMPATH_TESTDATA/histolytics``.

    Returns
    -------
    StromalNuclei

    Example
    -------
    >>> data = stromal_nuclei()
    >>> data.mask.mean()  # nucleus fraction of the image
    """
    import pandas as pd
    import shapely
    from PIL import Image
    from skimage.draw import polygon as draw_polygon

    root = stromal_root(root)
    image = np.asarray(Image.open(root / IMAGE).convert("RGB"))
    df = pd.read_parquet(root / CELLS)
    col = "class_name" if "class_name" in df.columns else "class"
    geoms = shapely.from_wkb(df["geometry"].to_numpy())
    h, w = image.shape[:2]
    inst = np.zeros((h, w), np.int32)
    cents = np.zeros((len(geoms), 2))
    for i, g in enumerate(geoms):
        polys = list(g.geoms) if hasattr(g, "geoms") else [g]
        for p in polys:
            xy = np.asarray(p.exterior.coords)
            rr, cc = draw_polygon(xy[:, 1], xy[:, 0], shape=(h, w))
            inst[rr, cc] = i + 1
        c = g.centroid
        cents[i] = (c.x, c.y)
    return StromalNuclei(
        image=image,
        mask=(inst > 0).astype(np.uint8),
        instances=inst,
        classes=df[col].astype(str).to_numpy(),
        centroids=cents,
    )
