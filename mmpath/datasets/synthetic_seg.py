"""Synthetic segmentation and anomaly data with known answers.

Images are H&E-like: each pixel mixes eosin pink and haematoxylin purple by a stain value
``t`` in [0, 1], plus RGB noise. Masks are exact, because the shapes are drawn from formulas.

Kinds of segmentation images (:func:`make_seg_images`):

* ``"colour"``: smooth purple shapes on a smooth pink background. Otsu gets these right.
* ``"texture"``: **Otsu gets these wrong by construction.** Foreground and background draw
  their stain values from the *same* distribution (same mean, same spread, hence the same
  colours, grey levels and saturation per pixel); only the texture differs: the background
  is spatially smooth, the foreground is fine-grained noise. Any per-pixel threshold labels
  a random part of both regions, while a model that looks at neighbourhoods separates them.
* ``"multiclass"``: background (0), textured shapes (1) and dark smooth shapes (2).

Anomaly tiles (:func:`make_anomaly_tiles`): normal tiles are pink tissue with sparse purple
nuclei. Anomalous ones (``kind``): ``"ink"`` adds a blob of saturated blue pen ink or black
debris; ``"simple"`` tiles are *simpler* than normal ones (a smooth, nucleus-free stain field
with less pixel noise: lower compressed size, lower raw reconstruction error, the direction
that inverts a raw likelihood score); ``"busy"`` tiles are *busier* (dense, fine-grained
haematoxylin speckle over the same tissue).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "SegImages",
    "make_seg_images",
    "make_anomaly_tiles",
    "SEG_KINDS",
    "ANOMALY_KINDS",
    "stain_to_rgb",
]

EOSIN = np.array([232.0, 150.0, 190.0])
HEMATOXYLIN = np.array([80.0, 50.0, 140.0])
SEG_KINDS = ("colour", "texture", "multiclass")
_T_MEAN, _T_STD = 0.45, 0.18


class SegImages(NamedTuple):
    images: np.ndarray  # (n, S, S, 3) uint8
    masks: np.ndarray  # (n, S, S) uint8 labels
    class_names: tuple[str, ...]


def stain_to_rgb(t: np.ndarray, rng: np.random.Generator, noise: float = 3.0) -> np.ndarray:
    """RGB uint8 from a stain field ``t`` (0 = eosin pink, 1 = haematoxylin purple)."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    rgb = (1 - t) * EOSIN + t * HEMATOXYLIN + rng.normal(0, noise, t.shape[:-1] + (3,))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _standardise(field: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (field - field.mean()) / (field.std() + 1e-8) * std + mean


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    return _standardise(ndimage.gaussian_filter(rng.normal(size=shape), sigma), _T_MEAN, _T_STD)


def _grain_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    # Fine grain with exactly the smooth field's mean and spread: only texture differs.
    return _standardise(rng.normal(size=shape), _T_MEAN, _T_STD)


def _ellipses(rng: np.random.Generator, size: int, n: int, rmin: float, rmax: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        rx, ry = rng.uniform(rmin, rmax, 2) * size
        th = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(th) + dy * np.sin(th)
        v = -dx * np.sin(th) + dy * np.cos(th)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
    return mask


def make_seg_images(n: int, size: int = 64, *, kind: str = "texture", seed: int = 0) -> SegImages:
    """``n`` H&E-like images with exact masks.

    Parameters
    ----------
    n
        Number of images.
    size
        Side in pixels.
    kind
        ``"colour"``, ``"texture"`` (Otsu fails by construction) or ``"multiclass"``.
    seed
        Random seed (the output is a pure function of the arguments).

    Returns
    -------
    :class:`SegImages` with ``images`` ``(n, size, size, 3)`` uint8 and ``masks``
    ``(n, size, size)`` uint8.

    Example
    -------
    >>> data = make_seg_images(16, 64, kind="texture")
    >>> data.images.shape, data.masks.max()
    ((16, 64, 64, 3), 1)
    """
    if kind not in SEG_KINDS:
        raise ValueError(f"kind must be one of {SEG_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    shape = (size, size)
    for i in range(n):
        smooth = _smooth_field(rng, shape, sigma=max(2.0, size / 24))
        fg = _ellipses(rng, size, int(rng.integers(1, 3)), 0.12, 0.3)
        if kind == "colour":
            t = np.where(fg, smooth * 0.3 + 0.65, smooth * 0.3)
            masks[i] = fg
        elif kind == "texture":
            t = np.where(fg, _grain_field(rng, shape), smooth)
            masks[i] = fg
        else:
            dark = _ellipses(rng, size, 1, 0.1, 0.2) & ~fg
            t = np.where(fg, _grain_field(rng, shape), smooth)
            t = np.where(dark, 0.9 + 0.05 * smooth, t)
            masks[i] = fg.astype(np.uint8) + 2 * dark.astype(np.uint8)
        images[i] = stain_to_rgb(t, rng)
    names = (
        ("background", "textured") if kind != "multiclass" else ("background", "textured", "dark")
    )
    if kind == "colour":
        names = ("background", "nuclei-dense")
    return SegImages(images, masks, names)


ANOMALY_KINDS = ("ink", "simple", "busy")


def make_anomaly_tiles(
    n: int, size: int = 32, *, anomalous: float = 0.0, seed: int = 0, kind: str = "ink"
) -> tuple[np.ndarray, np.ndarray]:
    """Normal tissue tiles and (a fraction ``anomalous`` of) anomalous tiles of one ``kind``.

    ``kind``: ``"ink"`` (blue ink or black debris blobs), ``"simple"`` (smooth tissue without
    nuclei, simpler than normal), ``"busy"`` (dense fine speckle, busier than normal).

    Returns
    -------
    ``(images (n, size, size, 3) uint8, labels (n,) bool)`` with True for anomalous tiles.

    Example
    -------
    >>> normal, _ = make_anomaly_tiles(64, 32)
    >>> test, is_anomalous = make_anomaly_tiles(40, 32, anomalous=0.5, seed=1)
    """
    if kind not in ANOMALY_KINDS:
        raise ValueError(f"kind must be one of {ANOMALY_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, bool)
    labels[: int(round(anomalous * n))] = True
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        t = _smooth_field(rng, (size, size), 2.0) * 0.5
        nuclei = ndimage.gaussian_filter((rng.random((size, size)) < 0.02).astype(float), 0.8)
        if labels[i] and kind == "simple":
            t = _smooth_field(rng, (size, size), 6.0) * 0.3 + 0.1
            images[i] = stain_to_rgb(t, rng, noise=1.0)
            continue
        if labels[i] and kind == "busy":
            speckle = ndimage.gaussian_filter((rng.random((size, size)) < 0.25).astype(float), 0.5)
            images[i] = stain_to_rgb(t + 1.5 * speckle, rng, noise=6.0)
            continue
        t = t + 3.0 * nuclei
        img = stain_to_rgb(t, rng).astype(np.float64)
        if labels[i]:
            cx, cy = rng.uniform(0.3, 0.7, 2) * size
            r = rng.uniform(0.2, 0.35) * size
            blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            colour = np.array([30.0, 60.0, 200.0]) if rng.random() < 0.5 else np.array([20.0] * 3)
            img[blob] = colour + rng.normal(0, 5, (int(blob.sum()), 3))
        images[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return images, labels
