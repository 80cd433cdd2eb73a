"""Classical segmentation baselines (scikit-image), runnable on the same data as the U-Net.

They are what came before deep learning, kept so users can see what learning adds:

* :func:`otsu_mask`: one global threshold on grey level (or saturation), Otsu (1979);
* :func:`edge_mask`: Canny edges, closed and hole-filled into regions;
* :func:`region_growing_mask`: flood fill from the darkest seeds, with a tolerance set by
  the Otsu threshold;
* :func:`hematoxylin_otsu_mask`: stain-aware Otsu on the haematoxylin channel of a colour
  deconvolution (Ruifrok & Johnston 2001, scikit-image ``rgb2hed``), smoothed and cleaned;
  this is the baseline a U-Net must beat on nuclei (grey-level Otsu is a straw man on H&E:
  on the real histolytics stroma it scores Dice 0.19 vs 0.53 for this one);
* :func:`hematoxylin_watershed`: the same mask, debris removed, split into nucleus instances
  by a watershed seeded at h-maxima of the distance transform scaled by the nucleus size
  (labels ``(H, W)`` int32, 0 = background).

Each takes one RGB ``uint8`` image ``(H, W, 3)`` and returns a binary ``uint8`` mask with
1 = foreground (stained, darker tissue); :func:`baseline_segment` runs one over a stack.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "otsu_mask",
    "edge_mask",
    "region_growing_mask",
    "hematoxylin_otsu_mask",
    "hematoxylin_watershed",
    "instance_min_size",
    "baseline_segment",
    "BASELINES",
]


def _grey(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return rgb2gray(img)


def otsu_mask(image: np.ndarray, *, channel: str = "grey") -> np.ndarray:
    """Foreground where the grey level is below (saturation above) Otsu's threshold.

    Example
    -------
    >>> mask = otsu_mask(tile)
    """
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    if channel == "grey":
        g = _grey(image)
        return (g < threshold_otsu(g)).astype(np.uint8)
    if channel == "saturation":
        s = rgb2hsv(np.asarray(image))[..., 1]
        return (s > threshold_otsu(s)).astype(np.uint8)
    raise ValueError(f"channel must be 'grey' or 'saturation', got {channel!r}")


def edge_mask(image: np.ndarray, *, sigma: float = 2.0, min_size: int = 16) -> np.ndarray:
    """Regions enclosed by Canny edges (closed, hole-filled, small specks removed).

    Example
    -------
    >>> mask = edge_mask(tile, sigma=2.0)
    """
    from scipy import ndimage
    from skimage import feature, morphology

    g = _grey(image)
    edges = feature.canny(g, sigma=sigma)
    closed = morphology.closing(edges, morphology.disk(2)).astype(bool)
    filled = ndimage.binary_fill_holes(closed)
    return morphology.remove_small_objects(filled, max_size=min_size).astype(np.uint8)


def region_growing_mask(
    image: np.ndarray, *, seeds: np.ndarray | None = None, tolerance: float | None = None
) -> np.ndarray:
    """Flood fill on the smoothed grey image from dark seeds.

    Parameters
    ----------
    image
        RGB uint8 image.
    seeds
        ``(k, 2)`` (row, col) seed points; default: local minima darker than Otsu's threshold.
    tolerance
        Grey-level tolerance of the flood; default: the gap between the seed and Otsu's
        threshold.

    Example
    -------
    >>> mask = region_growing_mask(tile)
    """
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import flood

    g = gaussian(_grey(image), sigma=1.0)
    thr = threshold_otsu(g)
    if seeds is None:
        md = max(2, min(g.shape) // 8)
        seeds = peak_local_max(-g, min_distance=md, threshold_abs=-thr, num_peaks=16)
    out = np.zeros(g.shape, bool)
    for r, c in np.asarray(seeds, dtype=np.int64).reshape(-1, 2):
        if out[r, c]:
            continue
        tol = tolerance if tolerance is not None else max(thr - g[r, c], 1e-6)
        out |= flood(g, (int(r), int(c)), tolerance=float(tol))
    return out.astype(np.uint8)


def _hematoxylin(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return rgb2hed(img)[..., 0]


def hematoxylin_otsu_mask(
    image: np.ndarray,
    *,
    sigma: float = 1.0,
    min_size: int = 16,
    threshold: float | None = None,
) -> np.ndarray:
    """Nuclei where the haematoxylin density exceeds Otsu's threshold (stain-aware).

    Parameters
    ----------
    image
        RGB uint8 H&E image.
    sigma
        Gaussian smoothing of the haematoxylin channel before thresholding.
    min_size
        Connected components of at most this many pixels are removed.
    threshold
        A fixed haematoxylin threshold (e.g. learnt on a whole image); default: Otsu's on
        this image.

    Example
    -------
    >>> mask = hematoxylin_otsu_mask(tile)
    """
    from skimage import morphology
    from skimage.filters import gaussian, threshold_otsu

    h = _hematoxylin(image)
    if sigma > 0:
        h = gaussian(h, sigma=sigma)
    thr = threshold_otsu(h) if threshold is None else threshold
    m = h > thr
    if min_size > 0:
        m = morphology.remove_small_objects(m, max_size=min_size)
    return m.astype(np.uint8)


def hematoxylin_watershed(
    image: np.ndarray, *, nucleus_diameter: float = 16.0, min_fraction: float = 0.5, **kwargs
) -> np.ndarray:
    """Nucleus instances: the haematoxylin mask split by a distance-transform watershed.

    Seeds are the h-maxima of the smoothed distance transform with ``h = diameter / 8`` (a
    quarter of the nucleus radius): a neck between two touching nuclei splits them, the
    ripples of one irregular nucleus do not. Plain local maxima at a fixed ``min_distance``
    over-split (694 instances for 232 nuclei on the held-out half of the real stroma; this
    gives 255). Stained specks smaller than ``min_fraction`` of a nucleus disc are dropped
    from the mask first; every remaining component gets at least one seed, so the instances
    cover exactly ``hematoxylin_otsu_mask(image, min_size=instance_min_size(...))``.

    Parameters
    ----------
    image
        RGB uint8 H&E image.
    nucleus_diameter
        Typical nucleus diameter in pixels (16 px = 8 µm at 0.5 µm/px).
    min_fraction
        Components smaller than this fraction of a nucleus disc's area are removed.
    kwargs
        Go to :func:`hematoxylin_otsu_mask` (``sigma``, ``threshold``).

    Returns
    -------
    An ``(H, W)`` int32 label image (0 = background).

    Example
    -------
    >>> labels = hematoxylin_watershed(tile, nucleus_diameter=16)
    """
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if nucleus_diameter <= 0:
        raise ValueError(f"nucleus_diameter must be > 0 px, got {nucleus_diameter}")
    kwargs.setdefault("min_size", instance_min_size(nucleus_diameter, min_fraction))
    m = hematoxylin_otsu_mask(image, **kwargs).astype(bool)
    if not m.any():
        return np.zeros(m.shape, np.int32)
    dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(m), 1.0)
    markers, n = ndimage.label(h_maxima(dist, max(0.5, nucleus_diameter / 8)) & m)
    comp, n_comp = ndimage.label(m)
    seeded = np.zeros(n_comp + 1, bool)
    seeded[np.unique(comp[markers > 0])] = True
    missing = np.flatnonzero(~seeded[1:]) + 1  # components without an h-maximum: one seed
    if len(missing):
        peaks = np.asarray(ndimage.maximum_position(dist, comp, missing)).reshape(-1, 2)
        markers[tuple(peaks.T)] = n + 1 + np.arange(len(missing))
    return watershed(-dist, markers, mask=m).astype(np.int32)


def instance_min_size(nucleus_diameter: float, min_fraction: float = 0.5) -> int:
    """Pixels below which :func:`hematoxylin_watershed` drops a component (debris)."""
    return int(min_fraction * np.pi * (nucleus_diameter / 2) ** 2)


BASELINES = {
    "hematoxylin_otsu": hematoxylin_otsu_mask,
    "hematoxylin_watershed": hematoxylin_watershed,
    "otsu": otsu_mask,
    "edge": edge_mask,
    "region_growing": region_growing_mask,
}


def baseline_segment(images: np.ndarray, method: str = "otsu", **kwargs) -> np.ndarray:
    """Run a classical baseline over a stack ``(n, H, W, 3)``: masks ``(n, H, W)``.

    Methods: ``"hematoxylin_otsu"`` (stain-aware, the one to compare a nuclei model with),
    ``"hematoxylin_watershed"`` (instances, int32 labels), ``"otsu"`` (grey level),
    ``"edge"``, ``"region_growing"``. The default stays ``"otsu"`` for backward
    compatibility; on H&E nuclei use ``"hematoxylin_otsu"``.

    Example
    -------
    >>> masks = baseline_segment(data.images, "otsu")
    >>> mm.metrics.dice_jaccard(list(masks), list(data.masks), 2)
    """
    if method not in BASELINES:
        raise ValueError(f"method must be one of {sorted(BASELINES)}, got {method!r}")
    fn = BASELINES[method]
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        return fn(imgs, **kwargs)
    return np.stack([fn(im, **kwargs) for im in imgs])
