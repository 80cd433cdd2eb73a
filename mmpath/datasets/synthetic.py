"""Synthetic slides with known tissue geometry, for tests and benchmarks.

The slide is rendered from an analytic description (:class:`SlideSpec`), tile by tile and
level by level, so a 20,000 x 20,000 px pyramid is written without ever holding a level in
memory. Because the geometry is known, tile counts and tissue fractions have exact answers.

Tissue looks H&E-like: pink eosin background with purple haematoxylin "nuclei" whose density
is a parameter of each region. Pen strokes (saturated blue) and dark artefacts (near-black)
can be added to exercise tissue detection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmpath.io._atomic import atomic_path

__all__ = ["Region", "SlideSpec", "render", "write_synthetic_slide", "default_spec"]

BACKGROUND = (243, 241, 244)
EOSIN = (232, 150, 190)
HEMATOXYLIN = (80, 50, 140)
PEN = (30, 60, 200)
DARK = (15, 15, 15)


@dataclass(frozen=True)
class Region:
    """A shape in level-0 pixels.

    ``kind`` is ``"ellipse"`` (cx, cy, rx, ry), ``"rect"`` (x0, y0, x1, y1),
    ``"pen"`` (a stroke from (x0, y0) to (x1, y1) with half-width ``width``) or ``"dark"``
    (a rect of near-black artefact). ``nuclei`` is the nuclei density (0-1) of tissue.
    """

    kind: str
    params: tuple[float, float, float, float]
    nuclei: float = 0.3
    width: float = 20.0

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        a, b, c, d = self.params
        if self.kind == "ellipse":
            return ((x - a) / c) ** 2 + ((y - b) / d) ** 2 <= 1.0
        if self.kind in ("rect", "dark"):
            return (x >= a) & (x < c) & (y >= b) & (y < d)
        if self.kind == "pen":
            px, py = c - a, d - b
            t = np.clip(((x - a) * px + (y - b) * py) / (px * px + py * py), 0, 1)
            return np.hypot(x - (a + t * px), y - (b + t * py)) <= self.width
        raise ValueError(f"unknown region kind {self.kind!r}")

    @property
    def is_tissue(self) -> bool:
        return self.kind in ("ellipse", "rect")


@dataclass(frozen=True)
class SlideSpec:
    """Everything needed to render a synthetic slide."""

    width: int
    height: int
    regions: tuple[Region, ...]
    mpp: float | None = 0.5
    seed: int = 0
    nucleus_radius_um: float = 3.5
    levels: tuple[int, ...] = field(default=(1,))  # downsample factors, 1 first

    def tissue_mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True where level-0 points ``(x, y)`` are tissue (pen/dark regions excluded)."""
        inside = np.zeros(np.broadcast(x, y).shape, bool)
        for r in self.regions:
            if r.is_tissue:
                inside |= r.contains(x, y)
        for r in self.regions:
            if not r.is_tissue:
                inside &= ~r.contains(x, y)
        return inside


def default_spec(
    width: int = 4096,
    height: int = 3072,
    *,
    mpp: float | None = 0.5,
    seed: int = 0,
    levels: Sequence[int] = (1, 4, 16),
    artefacts: bool = False,
) -> SlideSpec:
    """Two tissue regions (an ellipse and a rectangle) of different nuclei density."""
    regions = [
        Region("ellipse", (0.30 * width, 0.45 * height, 0.20 * width, 0.30 * height), 0.45),
        Region("rect", (0.60 * width, 0.20 * height, 0.90 * width, 0.75 * height), 0.15),
    ]
    if artefacts:
        regions.append(
            Region(
                "pen",
                (0.05 * width, 0.90 * height, 0.95 * width, 0.88 * height),
                width=0.006 * width,
            )
        )
        regions.append(Region("dark", (0.02 * width, 0.02 * height, 0.08 * width, 0.10 * height)))
    return SlideSpec(width, height, tuple(regions), mpp=mpp, seed=seed, levels=tuple(levels))


def _hash_noise(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-pixel uniform noise in [0, 1) from integer coordinates."""
    h = (ix.astype(np.uint64) * np.uint64(73856093)) ^ (iy.astype(np.uint64) * np.uint64(19349663))
    h ^= np.uint64(seed * 83492791 + 1)
    h = (h ^ (h >> np.uint64(13))) * np.uint64(0x5BD1E995)
    h ^= h >> np.uint64(15)
    return (h & np.uint64(0xFFFF)).astype(np.float32) / 65536.0


def render(
    spec: SlideSpec,
    location: tuple[float, float],
    size: tuple[int, int],
    *,
    downsample: float = 1.0,
) -> np.ndarray:
    """Render the ``size=(w, h)`` patch whose top-left is level-0 ``location`` at ``downsample``.

    Example
    -------
    >>> patch = render(default_spec(), (0, 0), (256, 256), downsample=4)
    """
    (x0, y0), (w, h), ds = location, size, downsample
    xs = x0 + (np.arange(w, dtype=np.float64) + 0.5) * ds
    ys = y0 + (np.arange(h, dtype=np.float64) + 0.5) * ds
    X, Y = np.meshgrid(xs, ys)
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    tissue = spec.tissue_mask(X, Y)
    if tissue.any():
        # Nuclei: a jittered lattice of discs in level-0 space, kept with prob. = density.
        r_px = spec.nucleus_radius_um / (spec.mpp or 0.5)
        cell = 3.0 * r_px
        cx, cy = np.floor(X / cell), np.floor(Y / cell)
        jx = _hash_noise(cx, cy, spec.seed) * (cell - 2 * r_px) + r_px
        jy = _hash_noise(cy, cx, spec.seed + 7) * (cell - 2 * r_px) + r_px
        dist = np.hypot(X - (cx * cell + jx), Y - (cy * cell + jy))
        density = np.zeros_like(X, dtype=np.float32)
        for reg in spec.regions:
            if reg.is_tissue:
                density = np.where(reg.contains(X, Y), reg.nuclei, density)
        keep = _hash_noise(cx, cy, spec.seed + 13) < density
        nucleus = tissue & keep & (dist <= r_px)
        img[tissue] = EOSIN
        img[nucleus] = HEMATOXYLIN
    for reg in spec.regions:
        if not reg.is_tissue:
            img[reg.contains(X, Y)] = PEN if reg.kind == "pen" else DARK
    noise = _hash_noise(np.floor(X / ds), np.floor(Y / ds), spec.seed + 29)[..., None]
    img += (noise - 0.5) * 12.0
    return np.clip(img, 0, 255).astype(np.uint8)


def _tiles(spec: SlideSpec, ds: int, lw: int, lh: int, ts: int) -> Iterator[np.ndarray]:
    for ty in range(0, lh, ts):
        for tx in range(0, lw, ts):
            yield render(spec, (tx * ds, ty * ds), (ts, ts), downsample=ds)


def write_synthetic_slide(
    path: str | os.PathLike[str],
    spec: SlideSpec | None = None,
    *,
    tile_size: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
) -> Path:
    """Write ``spec`` as a tiled pyramidal TIFF that openslide opens as ``generic-tiff``.

    Parameters
    ----------
    path
        Output ``.tif`` path (written atomically).
    spec
        The slide description; :func:`default_spec` when ``None``.
    tile_size
        TIFF tile side (multiple of 16).
    compression
        ``"jpeg"``, ``"deflate"`` or ``"none"``.
    quality
        JPEG quality.

    Returns
    -------
    The path written.

    Example
    -------
    >>> write_synthetic_slide("slide.tif", default_spec(20_000, 20_000, levels=(1, 4, 16)))
    """
    import tifffile

    spec = spec or default_spec()
    path = Path(path)
    comp = None if compression == "none" else compression
    comp_args = {"level": quality} if compression == "jpeg" else {}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for i, ds in enumerate(spec.levels):
            lw, lh = math.ceil(spec.width / ds), math.ceil(spec.height / ds)
            kwargs = {}
            if spec.mpp is not None:
                kwargs = {
                    "resolution": (1e4 / (spec.mpp * ds),) * 2,
                    "resolutionunit": "CENTIMETER",
                }
            tw.write(
                _tiles(spec, ds, lw, lh, tile_size),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="rgb",
                compression=comp,
                compressionargs=comp_args or None,
                subfiletype=1 if i else 0,
                metadata=None,
                **kwargs,
            )
    return path
