"""Estimate a slide's resolution (µm/px) from its pixels: the size of its nuclei.

Method (nuclear-size calibration, the way a pathologist judges magnification by eye):

1. **Where**: a thumbnail (longer side 1024 px) marks tissue (not glass: min channel < 220
   with some colour); of the cells of a patch-sized grid that are at least a quarter tissue,
   the ``n_patches`` richest in haematoxylin are read at level 0.
2. **Nuclei**: haematoxylin by colour deconvolution (``skimage.color.rgb2hed``, Ruifrok &
   Johnston 2001), clipped to its 1st-99th percentile in the patch's tissue, thresholded by
   Otsu (per patch); holes
   filled; touching nuclei split by a watershed on the distance transform, with seeds at least
   0.6 of the typical radius apart (the typical radius from the unsplit blobs).
3. **Size**: per patch, the area-weighted median nucleus area (the area of the nucleus that
   holds the median nucleus pixel: robust to the many specks a threshold also finds), as an
   equivalent diameter ``d_px``. When nuclei are larger than 24 px (a fine scan, or a
   resampled one) the remaining patches are read downsampled so the cost stays flat.
4. **Scale**: ``mpp = NUCLEUS_DIAMETER_UM / d_px``, ``d_px`` the median over patches
   weighted by their nuclei.

``NUCLEUS_DIAMETER_UM`` = 7.5 µm, the area-weighted median of H&E nuclei as this method
measures them: 6.9 µm on the Aperio CMU-1 sample at its metadata 0.499 µm/px, 7.0 µm on
synthetic nuclei drawn 7 µm wide, 8.4 µm on the histolytics HGSC stroma crop if it is
0.5 µm/px (its scale is not documented upstream; its lymphocytes, ~7 µm nuclei, measure 16 px
in its own polygons, which puts it at ~0.43-0.5 µm/px). Typical nuclei are 6-9 µm
(lymphocytes ~7, fibroblasts elongated, epithelial 8-10): on tissue dominated by large tumour
nuclei the estimate reads too coarse by up to ~1.3x, on lymphoid tissue a little too fine.

Accuracy (``tests/pp/test_estimate_mpp.py``, README "Slides"): within 25% of the truth on the
sample slide, the stroma image and synthetic slides resampled by 0.5x, 1x, 2x and 4x (0.125-1
µm/px). It tells 20x from 40x reliably; it is not a substitute for a calibrated scanner, so
the metadata wins whenever it is plausible, and the estimate is used only on request
(``--estimate-mpp``) or to warn when the two disagree by more than 1.5x.

``confidence`` (0-1) is the product of a count term (``min(1, n_nuclei / 100)``), a
precision term (``exp(-u / 0.366)``, ``u`` the measured uncertainty as the log half-width of a
90% interval: the sampling noise, from a bootstrap over each patch's nuclei, and the
disagreement between patches, their weighted median absolute deviation of ``log(d_px)`` as a
normal sd, combined as independent) and a patch term (``min(1, 0.4 + 0.2 n_patches)``: one
patch cannot show whether its nuclei are typical of the slide, so a single-patch image, e.g.
a 1,500 px export, gets at most 0.6, two patches 0.8). ``low``/``high`` is a 90% range: the
measured uncertainty and the calibration's (:data:`CALIBRATION_SD`, how far nucleus sizes of
different tissues stray from 7.5 µm), so it is never narrower than about +-20%; it held the
truth in the README's matrix (``tools/bench/bench_mpp.py``, ``truth_in_range``).
Below :data:`MIN_CONFIDENCE`
callers refuse to use the estimate. Bad input raises :class:`~mmpath.errors.SlideError`
with one line: no tissue, a greyscale scan (no colour to deconvolve), or fewer than
:data:`MIN_NUCLEI` nuclei.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmpath._settings import spell
from mmpath.errors import SlideError
from mmpath.io.slide import Slide

log = logging.getLogger(__name__)

__all__ = ["estimate_mpp", "MppEstimate", "NUCLEUS_DIAMETER_UM"]

NUCLEUS_DIAMETER_UM = 7.5
MIN_NUCLEI = 30
MIN_CONFIDENCE = 0.3
_GLASS = 220  # min channel above this is glass
_GREY = 12  # tissue whose channels differ by less than this (median) is greyscale
_MIN_CONTRAST = 0.03  # haematoxylin OD between nuclei and the rest
_FINE = 24  # nuclei wider than this many px: read the other patches downsampled
_N_BOOT = 200  # bootstrap replicates for the interval
_Z90 = 1.645  # a normal's 90% interval, in standard deviations
_MAD_SD = 1.4826  # a normal's sd per median absolute deviation
# Confidence falls by 1/e when the measured 90% interval reaches this far (log, ~+-45%): the
# earlier agreement scale (0.15 in MAD between patches) as a 90% half-width.
_UNCERTAINTY_SCALE = 0.15 * _MAD_SD * _Z90
# Log-sd of the calibration error: the 12 cases of tests/pp/test_estimate_mpp.py (README
# table) err by -13% to +20% around the truth, sd 0.11 in log; nuclei differ by tissue.
CALIBRATION_SD = 0.11


@dataclass(frozen=True)
class MppEstimate:
    """The result of :func:`estimate_mpp`.

    Attributes
    ----------
    mpp
        Estimated level-0 µm/px.
    confidence
        0-1; below 0.3 the estimate should not be used.
    low, high
        90% range (µm/px): nuclei sampling (bootstrap), disagreement between patches and the
        calibration of the 7.5 µm nucleus, so never narrower than about +-20%.
    n_nuclei
        Nuclei measured.
    n_patches
        Patches they came from.
    nucleus_px
        Median nucleus diameter in level-0 pixels.
    method
        What was measured, for provenance.
    """

    mpp: float
    confidence: float
    low: float
    high: float
    n_nuclei: int
    n_patches: int
    nucleus_px: float
    method: str = f"nucleus size (rgb2hed + watershed), {NUCLEUS_DIAMETER_UM} µm nuclei"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for provenance)."""
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _haematoxylin(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed

    return rgb2hed(img)[..., 0]


def _tissue(img: np.ndarray) -> np.ndarray:
    img16 = img.astype(np.int16)
    colour = img16.max(-1) - img16.min(-1)
    return (img.min(-1) < _GLASS) & (colour > 6)


def _h_threshold(imgs: list[np.ndarray]) -> tuple[float, float, float] | None:
    """Clip range and Otsu threshold of haematoxylin over the tissue of all patches."""
    from skimage.filters import threshold_otsu

    parts = [v for v in (_haematoxylin(im)[_tissue(im)] for im in imgs) if v.size]
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size < 500:
        return None
    lo, hi = np.percentile(values, (1, 99))
    if not hi > lo:
        return None
    values = np.clip(values, lo, hi)
    t = float(threshold_otsu(values))
    # Nuclei stand out by ~0.08-0.12 haematoxylin OD on real and synthetic H&E; stain noise
    # alone splits by < 0.01. Below _MIN_CONTRAST there are no nuclei to measure.
    if values[values > t].mean() - values[values <= t].mean() < _MIN_CONTRAST:
        return None
    return float(lo), float(hi), t


def _nucleus_areas(img: np.ndarray, thr: tuple[float, float, float]) -> np.ndarray:
    """Areas (px) of the nuclei in ``img``: haematoxylin above ``thr``, split by watershed."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    lo, hi, t = thr
    tissue = _tissue(img)
    h = np.clip(_haematoxylin(img), lo, hi)
    mask = ndi.binary_fill_holes((h > t) & tissue)
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros(0)
    r0 = math.sqrt(_weighted_median(np.bincount(labels.ravel())[1:]) / math.pi)
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(
        dist, min_distance=max(1, round(0.6 * r0)), labels=labels, exclude_border=False
    )
    markers = np.zeros(labels.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    split = watershed(-dist, markers, mask=mask)
    areas = np.bincount(split.ravel())[1:]
    return areas[areas >= 3]


def _greyscale(slide: Slide) -> SlideError:
    return SlideError(
        f"slide {slide.slide_id!r} looks greyscale: nuclei cannot be told from the rest "
        "without H&E colour, so its mpp cannot be estimated; give it with "
        + spell("mpp=", "--slide-mpp")
    )


def _weighted_median(areas: np.ndarray) -> float:
    """The area of the object holding the median object pixel."""
    a = np.sort(np.asarray(areas, np.float64))
    a = a[a > 0]
    if a.size == 0:
        return 0.0
    cum = np.cumsum(a)
    return float(a[np.searchsorted(cum, cum[-1] / 2)])


def _wquantile(values: np.ndarray, weights: np.ndarray, q: float = 0.5) -> float:
    """Weighted quantile (patches with more nuclei count more)."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def _patch_term(n_patches: int) -> float:
    """Confidence cap by patch count: one patch cannot show whether its nuclei are typical of
    the slide (0.6), two can barely (0.8), three or more can (1)."""
    return min(1.0, 0.4 + 0.2 * n_patches)


def _bootstrap_interval(
    objects: list[np.ndarray], weights: np.ndarray, n_boot: int = _N_BOOT
) -> tuple[float, float]:
    """A 90% interval of the nucleus diameter (px) when nuclei are resampled.

    Each replicate draws every patch's objects with replacement, recomputes each patch's
    area-weighted median diameter and their count-weighted median, exactly as the estimate
    itself is computed: the sampling noise of which nuclei a patch happened to hold. The
    disagreement between patches is measured separately (their spread), and with one patch
    it cannot be measured at all (:func:`_patch_term` caps the confidence instead). Seeded:
    the same slide gives the same interval.
    """
    rng = np.random.default_rng(0)
    diam = np.empty((n_boot, len(objects)))
    for j, areas in enumerate(objects):
        a = np.sort(areas[rng.integers(0, len(areas), (n_boot, len(areas)))], axis=1)
        cum = np.cumsum(a, axis=1)
        mid = (cum >= cum[:, -1:] / 2).argmax(axis=1)  # the object holding the median pixel
        diam[:, j] = 2 * np.sqrt(a[np.arange(n_boot), mid] / math.pi)
    logs = np.log(diam)
    reps = np.array([_wquantile(row, weights) for row in logs])
    # From the quartiles, as a normal's 5-95%: the median of a few hundred areas jumps when
    # a resample gathers several merged blobs, and the raw 5-95% would follow those jumps.
    q25, q50, q75 = np.percentile(reps, (25, 50, 75))
    sd = (q75 - q25) / 1.349
    return float(np.exp(q50 - _Z90 * sd)), float(np.exp(q50 + _Z90 * sd))


def _patch_origins(slide: Slide, patch0: int, n: int) -> list[tuple[int, int]]:
    """Top-left corners (level 0) of the ``n`` tissue cells richest in haematoxylin."""
    W, H = slide.dimensions
    if max(W, H) <= patch0:
        return [(0, 0)]
    thumb = slide.get_thumbnail(1024)
    sx, sy = W / thumb.shape[1], H / thumb.shape[0]
    tissue = _tissue(thumb)
    if not tissue.any() and (thumb.min(-1) < _GLASS).mean() > 0.01:
        raise _greyscale(slide)
    score = np.where(tissue, np.clip(_haematoxylin(thumb), 0, None), 0)
    if not tissue.any():
        raise SlideError(
            f"slide {slide.slide_id!r}: no tissue found (the slide looks like empty glass); "
            "cannot estimate its mpp from nuclei"
        )
    cells = []
    for y0 in range(0, max(1, H - patch0 + 1), patch0):
        for x0 in range(0, max(1, W - patch0 + 1), patch0):
            ty0, tx0 = int(y0 / sy), int(x0 / sx)
            ty1, tx1 = int((y0 + patch0) / sy) + 1, int((x0 + patch0) / sx) + 1
            cell = tissue[ty0:ty1, tx0:tx1]
            if cell.size and cell.mean() >= 0.25:
                cells.append((float(score[ty0:ty1, tx0:tx1].mean()), x0, y0))
    if not cells:  # small tissue: the patch around the tissue's centre of mass
        ys, xs = np.nonzero(tissue)
        cx, cy = xs.mean() * sx, ys.mean() * sy
        x0 = int(min(max(0, cx - patch0 / 2), max(0, W - patch0)))
        y0 = int(min(max(0, cy - patch0 / 2), max(0, H - patch0)))
        return [(x0, y0)]
    # The cells richest in haematoxylin: well-stained nuclei give a clean threshold (cells
    # picked at random over the tissue, stroma and fat included, measured 2x worse).
    cells.sort(reverse=True)
    return [(x, y) for _, x, y in cells[:n]]


def _read_patch(slide: Slide, x: int, y: int, patch0: int, ds: float) -> np.ndarray:
    """A ``patch0``-wide level-0 square at ``(x, y)``, downsampled by ``ds``."""
    W, H = slide.dimensions
    w, h = min(patch0, W - x), min(patch0, H - y)
    level = slide.best_level_for_downsample(ds)
    lds = slide.level_downsamples[level]
    img = slide.read_region((x, y), level, (max(1, round(w / lds)), max(1, round(h / lds))))
    out_w, out_h = max(1, round(w / ds)), max(1, round(h / ds))
    if img.shape[1] != out_w or img.shape[0] != out_h:
        img = np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BOX))
    return img


def estimate_mpp(slide: Slide, *, n_patches: int = 6, patch: int = 768) -> MppEstimate:
    """Estimate a slide's level-0 µm/px from the size of its nuclei.

    Haematoxylin by colour deconvolution, nuclei by Otsu threshold and watershed, their
    area-weighted median diameter compared with a typical nucleus of
    :data:`NUCLEUS_DIAMETER_UM` (7.5 µm); see the module docstring for the method, its
    calibration and its accuracy (within 25% on the tests' slides at 0.125-1 µm/px).

    Parameters
    ----------
    slide
        Any slide; its metadata mpp is not used.
    n_patches
        Tissue patches to measure.
    patch
        Patch side in analysed pixels.

    Returns
    -------
    An :class:`MppEstimate` (``mpp``, ``confidence``, ``low``/``high``...).

    Raises
    ------
    SlideError
        No tissue, a greyscale scan, or too few nuclei to measure.

    Example
    -------
    >>> est = mm.pp.estimate_mpp(mm.io.open_slide("export.png"))
    >>> est.mpp, est.confidence
    """
    if n_patches < 1 or patch < 64:
        raise SlideError("estimate_mpp needs n_patches >= 1 and patch >= 64 px")
    origins = _patch_origins(slide, patch, n_patches)
    imgs = [_read_patch(slide, x, y, patch, 1.0) for x, y in origins[:1]]
    thr = _h_threshold(imgs)
    ds = 1.0
    if thr is not None and len(origins) > 1:  # nuclei much wider than needed: read coarser
        probe = _nucleus_areas(imgs[0], thr)
        d0 = 2 * math.sqrt(_weighted_median(probe) / math.pi) if probe.size else 0.0
        if d0 > _FINE:
            ds = 2.0 ** math.floor(math.log2(d0 / 12))  # keep nuclei ~12-24 px wide
            imgs = []
    imgs += [_read_patch(slide, x, y, int(round(patch * ds)), ds) for x, y in origins[len(imgs) :]]
    if not any((im.min(-1) < _GLASS).sum() >= 500 for im in imgs):
        raise SlideError(
            f"slide {slide.slide_id!r}: no tissue found (the slide looks like empty glass); "
            "cannot estimate its mpp from nuclei"
        )
    dark = [im[im.min(-1) < _GLASS].astype(np.int16) for im in imgs]
    colour = np.concatenate(dark)
    if np.median(colour.max(-1) - colour.min(-1)) < _GREY:
        raise _greyscale(slide)
    imgs = [im for im in imgs if _tissue(im).sum() >= 500]
    per_patch: list[float] = []  # nucleus diameter in level-0 px
    counts: list[int] = []
    objects: list[np.ndarray] = []  # each patch's object areas (level-0 px), for the bootstrap
    for img in imgs:
        thr = _h_threshold([img])  # per patch: staining varies over a slide
        if thr is None:
            continue
        areas = _nucleus_areas(img, thr) * ds * ds
        typical = _weighted_median(areas)
        real = areas[areas >= typical / 4]  # nuclei, not threshold specks
        if len(real) < 5:
            continue
        per_patch.append(2 * math.sqrt(typical / math.pi))
        counts.append(len(real))
        objects.append(areas)
    n = int(sum(counts))
    if n < MIN_NUCLEI:
        raise SlideError(
            f"slide {slide.slide_id!r}: only {n} nuclei found (need {MIN_NUCLEI}); its mpp "
            "cannot be estimated from nuclei; give it with " + spell("mpp=", "--slide-mpp")
        )
    logs, w = np.log(per_patch), np.asarray(counts, np.float64)
    d_px = math.exp(_wquantile(logs, w))
    spread = _wquantile(np.abs(logs - math.log(d_px)), w)  # between patches (weighted MAD)
    d_lo, d_hi = _bootstrap_interval(objects, w)
    # Measured uncertainty, as the half-width (log) of a 90% interval: sampling (how far the
    # bootstrap reaches from the estimate) and disagreement between patches (MAD as a normal
    # sd), taken as independent. The range adds the calibration (how typical nucleus sizes
    # differ between tissues), which is the same for every slide and so not in the confidence.
    sampling = max(math.log(d_hi / d_px), math.log(d_px / d_lo), 0.0)
    measured = math.hypot(sampling, _Z90 * _MAD_SD * spread)
    confidence = (
        min(1.0, n / 100) * math.exp(-measured / _UNCERTAINTY_SCALE) * _patch_term(len(counts))
    )
    reach = math.hypot(measured, _Z90 * CALIBRATION_SD)
    est = MppEstimate(
        mpp=NUCLEUS_DIAMETER_UM / d_px,
        confidence=round(float(confidence), 3),
        low=NUCLEUS_DIAMETER_UM / d_px * math.exp(-reach),
        high=NUCLEUS_DIAMETER_UM / d_px * math.exp(reach),
        n_nuclei=n,
        n_patches=len(per_patch),
        nucleus_px=d_px,
    )
    log.info(
        "slide %r: estimated %.3g µm/px from %d nuclei in %d patch(es) (confidence %.2f)",
        slide.slide_id,
        est.mpp,
        n,
        est.n_patches,
        est.confidence,
    )
    return est


def settle_mpp(slide: Slide, *, estimate: bool) -> MppEstimate | None:
    """Apply the mpp rule to an open slide before tiling or embedding (CLI ``--estimate-mpp``).

    * mpp known (metadata or override) and ``estimate``: estimate too, warn when the two
      disagree by more than 1.5x; the known mpp is kept.
    * mpp unknown and ``estimate``: use the estimate (``mpp_source="estimate"``), or refuse
      when its confidence is below :data:`MIN_CONFIDENCE`.
    * mpp unknown, no ``estimate``: refuse, naming ``--slide-mpp`` / ``--estimate-mpp``.

    Returns the estimate when one was made (also kept in the slide's provenance).
    """
    from mmpath.io._mpp import DISAGREE_FACTOR, disagreement

    if slide.mpp is None and not estimate:
        slide.require_mpp()
    if not estimate:
        return None
    est = estimate_mpp(slide)
    slide.mpp_estimate = est.to_dict()
    if slide.mpp is None:
        if est.confidence < MIN_CONFIDENCE:
            raise SlideError(
                f"slide {slide.slide_id!r} has no mpp and the estimate from its nuclei "
                f"({est.mpp:.3g} µm/px) has low confidence ({est.confidence:.2f}); give it with "
                + spell("mpp=", "--slide-mpp")
            )
        slide.mpp, slide.mpp_source = float(est.mpp), "estimate"
        log.warning(
            "slide %r has no mpp: using %.3g µm/px estimated from its nuclei (confidence %.2f)",
            slide.slide_id,
            est.mpp,
            est.confidence,
        )
        return est
    ratio = disagreement(slide.mpp, est.mpp)
    if ratio is not None and ratio > DISAGREE_FACTOR:
        log.warning(
            "slide %r: its mpp %.3g µm/px (%s) and the %.3g estimated from its nuclei differ "
            "%.1fx; check the scan's magnification (%s overrides)",
            slide.slide_id,
            slide.mpp,
            slide.mpp_source,
            est.mpp,
            ratio,
            spell("mpp=", "--slide-mpp"),
        )
    return est
