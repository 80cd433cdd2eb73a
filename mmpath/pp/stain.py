"""Stain normalisation (Macenko, Reinhard) fitted once per slide, applied per tile.

The fitting is torchstain's (1.4.1, MIT, numpy backend): ``NumpyMacenkoNormalizer.fit``
(re-stated in :func:`macenko_fit` with the pseudo-inverse for speed, proven equal)
(Macenko et al., ISBI 2009: the stain plane from the optical-density eigenvectors, the
haematoxylin/eosin vectors at its 1st/99th angle percentiles, the 99th-percentile
concentrations) and ``NumpyReinhardNormalizer.fit`` (Reinhard et al. 2001: per-channel mean and
standard deviation in LAB). torchstain's ``normalize`` refits the *source* on every image it is
given, which is slow and unstable on tiles with little tissue (a tile of glass has no stain
plane). Here the source is fitted once per slide, on its tissue pixels at low resolution, and
:class:`StainNormalizer` applies the fixed source->target mapping to each tile with
torchstain's own formulas (for Macenko, unmixing and re-mixing folded into one 3 x 3 matrix
on optical density, read from a 256-entry table: ~10x cheaper than torchstain per tile);
``tests/pp/test_stain.py`` proves the result equal to ``torchstain``'s ``normalize`` (within
one grey level) when source and image are the same.

Glass stays glass: pixels whose darkest channel is above 235 keep their colour, those below
215 take the normalised colour, and between the two the result blends linearly (optical
density is near zero there, and a background that drifted off-white would read as tissue to
every later step). ``keep_glass=False`` gives torchstain's raw mapping.

Vahadane (sparse NMF) is not offered: no maintained implementation exists (StainTools is
archived; torchstain does not ship one).

The :class:`StainTarget` (method and fitted numbers) is JSON-able: embeddings record it in
their provenance and trained models in their folder, so inference normalises to what
training saw.

Example
-------
>>> target = mm.pp.fit_stain_target("reference.png", method="macenko")
>>> out = mm.pp.normalize_stain(tile, target)
>>> mm.tl.embed(tiles, "uni", stain=target)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.errors import DataError
from mmpath.io.slide import Slide

log = logging.getLogger(__name__)

__all__ = [
    "StainTarget",
    "StainNormalizer",
    "fit_stain_target",
    "normalize_stain",
    "stain_normalizer",
    "STAIN_METHODS",
]

STAIN_METHODS = ("macenko", "reinhard")
_IO, _ALPHA, _BETA = 240, 1, 0.15  # torchstain's defaults (transmitted light, angles, OD floor)
_GLASS_LO, _GLASS_HI = 215, 235
_MIN_TISSUE_PX = 2000
_MAX_FIT_PX = 400_000
_FIT_SIDE = 2048  # slide thumbnails for fitting: longer side in px


@dataclass(frozen=True)
class StainTarget:
    """A fitted stain appearance: the target of normalisation (or a slide's source fit).

    Attributes
    ----------
    method
        ``"macenko"`` or ``"reinhard"``.
    params
        Macenko: ``stain_matrix`` (3 x 2: RGB optical density of haematoxylin, eosin) and
        ``max_conc`` (their 99th-percentile concentrations). Reinhard: ``means`` and ``stds``
        of L, a, b.
    source
        What it was fitted on (a path, ``"array"``, a slide id).
    """

    method: str
    params: dict[str, Any]
    source: str = "array"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (provenance, model folders)."""
        return {"method": self.method, "params": self.params, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainTarget:
        """Inverse of :meth:`to_dict` (e.g. read back from ``uns`` or a model folder)."""
        try:
            method, params = str(d["method"]), dict(d["params"])
        except (KeyError, TypeError):
            raise DataError(f"not a stain target record: {d!r}") from None
        _check_method(method)
        return cls(method, {k: _plain(v) for k, v in params.items()}, str(d.get("source", "")))


STAIN_FILE = "stain_target.json"  # in model folders: the target training normalised to


def save_stain_target(target: StainTarget, folder: str | os.PathLike[str]) -> Path:
    """Write ``target`` as ``<folder>/stain_target.json`` (model folders), atomically."""
    import json

    from mmpath.io._atomic import atomic_path

    path = Path(folder) / STAIN_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(target.to_dict(), indent=2), encoding="utf-8")
    return path


def folder_stain_target(folder: str | os.PathLike[str]) -> StainTarget | None:
    """The stain target a model folder was trained with, or ``None`` if it has none."""
    import json

    path = Path(folder) / STAIN_FILE
    if not path.is_file():
        return None
    try:
        return StainTarget.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as err:
        raise DataError(f"{str(path)!r} is not a valid stain target ({err})") from None


def _plain(v):
    return np.asarray(v, dtype=np.float64).tolist()


def _check_method(method: str) -> None:
    if method not in STAIN_METHODS:
        raise DataError(f"stain method must be one of {', '.join(STAIN_METHODS)}, got {method!r}")


def _tissue_pixels(img: np.ndarray, what: str) -> np.ndarray:
    """Tissue pixels of an RGB image as ``(n, 1, 3)`` uint8 (torchstain takes images)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] < 3:
        raise DataError(f"{what}: expected an RGB image (h, w, 3), got shape {img.shape}")
    px = img[..., :3].reshape(-1, 3)
    if px.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 RGB pixels, got {px.dtype}")
    dark = px.min(1) < _GLASS_LO
    colour = px.max(1).astype(np.int16) - px.min(1) > 8
    px = px[dark & colour]
    if len(px) < _MIN_TISSUE_PX:
        raise DataError(
            f"{what} has no stained tissue to fit a stain to ({len(px)} tissue pixels; need "
            f"{_MIN_TISSUE_PX}); use an H&E region with nuclei and stroma"
        )
    if len(px) > _MAX_FIT_PX:  # a fixed subsample: the fit is a percentile/mean statistic
        px = px[np.linspace(0, len(px) - 1, _MAX_FIT_PX).astype(np.int64)]
    return px[:, None, :]


def macenko_fit(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Macenko's stain matrix ``HE`` (3 x 2), concentrations ``C`` (2 x n) and ``maxC`` (2,).

    torchstain's ``NumpyMacenkoNormalizer`` fit step, line for line, except that the
    concentrations use the pseudo-inverse instead of a ``lstsq`` call (the same least-squares
    solution, ~1000x faster): ``tests/pp/test_stain.py`` checks equality with torchstain.
    Raises ``ValueError`` when no pixel is stained enough to fit (glass).
    """
    od = -np.log((img.reshape(-1, 3).astype(float) + 1) / _IO)
    odhat = od[~np.any(od < _BETA, axis=1)]
    if len(odhat) < 3:
        raise ValueError("no stained pixels")
    _, eigvecs = np.linalg.eigh(np.cov(odhat.T))
    that = odhat.dot(eigvecs[:, 1:3])
    phi = np.arctan2(that[:, 1], that[:, 0])
    min_phi, max_phi = np.percentile(phi, _ALPHA), np.percentile(phi, 100 - _ALPHA)
    v_min = eigvecs[:, 1:3].dot(np.array([(np.cos(min_phi), np.sin(min_phi))]).T)
    v_max = eigvecs[:, 1:3].dot(np.array([(np.cos(max_phi), np.sin(max_phi))]).T)
    # haematoxylin first: the vector with the larger red optical density
    if v_min[0] > v_max[0]:
        he = np.array((v_min[:, 0], v_max[:, 0])).T
    else:
        he = np.array((v_max[:, 0], v_min[:, 0])).T
    conc = np.linalg.pinv(he) @ od.T
    maxc = np.array([np.percentile(conc[0, :], 99), np.percentile(conc[1, :], 99)])
    return he, conc, maxc


def _fit_pixels(px: np.ndarray, method: str, source: str) -> StainTarget:
    _check_method(method)
    if method == "macenko":
        try:
            he, _, maxc = macenko_fit(px)
        except (np.linalg.LinAlgError, ValueError, IndexError) as err:
            raise DataError(f"{source}: cannot fit a Macenko stain matrix ({err})") from None
        if not (np.isfinite(he).all() and np.isfinite(maxc).all() and (maxc > 0).all()):
            raise DataError(
                f"{source}: the Macenko fit is degenerate (one stain only?); use an H&E region "
                "with both nuclei and stroma"
            )
        params = {"stain_matrix": he.tolist(), "max_conc": maxc.tolist()}
    else:
        from torchstain.numpy.normalizers import NumpyReinhardNormalizer

        norm = NumpyReinhardNormalizer()
        norm.fit(px)
        means = np.asarray(norm.target_means, np.float64)
        stds = np.asarray(norm.target_stds, np.float64)
        if not (np.isfinite(stds).all() and (stds > 0).all()):
            raise DataError(f"{source}: the Reinhard fit is degenerate (a flat colour)")
        params = {"means": means.tolist(), "stds": stds.tolist()}
    return StainTarget(method, params, source)


def _image_of(reference, what: str) -> tuple[np.ndarray, str]:
    """Pixels to fit on: an array, a plain image file, or a slide (a thumbnail)."""
    if isinstance(reference, Slide):
        return reference.get_thumbnail(_FIT_SIDE), f"slide {reference.slide_id!r}"
    if isinstance(reference, (str, os.PathLike)):
        from mmpath.io import open_slide

        path = Path(reference).expanduser()
        with open_slide(path) as slide:
            return slide.get_thumbnail(_FIT_SIDE), str(path)
    return np.asarray(reference), what


def fit_stain_target(reference, *, method: str = "macenko") -> StainTarget:
    """Fit the stain appearance to normalise towards.

    Parameters
    ----------
    reference
        An RGB ``uint8`` image, an image or slide file (read as a thumbnail of at most
        2048 px), or an open :class:`~mmpath.io.Slide`. Only its tissue pixels are used.
    method
        ``"macenko"`` (stain vectors and concentrations; keeps structure best) or
        ``"reinhard"`` (LAB mean and spread; cheaper, shifts background too).

    Returns
    -------
    A :class:`StainTarget`.

    Example
    -------
    >>> target = mm.pp.fit_stain_target("ref.png")
    """
    _check_method(method)
    img, what = _image_of(reference, "the stain target image")
    return _fit_pixels(_tissue_pixels(img, what), method, what)


class StainNormalizer:
    """Picklable ``uint8 (h, w, 3) -> uint8 (h, w, 3)`` mapping one source stain to a target.

    Parameters
    ----------
    source, target
        Two :class:`StainTarget` of the same method: the slide's own fit and the target.
    keep_glass
        Keep near-white pixels as they are (see the module docstring).
    """

    def __init__(self, source: StainTarget, target: StainTarget, *, keep_glass: bool = True):
        if source.method != target.method:
            raise DataError(f"source fit is {source.method!r} but the target {target.method!r}")
        self.method, self.keep_glass = target.method, bool(keep_glass)
        self.source, self.target = source, target
        if self.method == "macenko":
            # torchstain per pixel: C = lstsq(HE_src, od); C /= maxC_src / maxC_ref;
            # od' = HE_ref @ C. lstsq is the pseudo-inverse's solution for this full-rank 3 x 2
            # system, so the whole mapping is one 3 x 3 matrix on optical density, and the
            # optical density of a uint8 value is a 256-entry table.
            unmix = np.linalg.pinv(np.asarray(source.params["stain_matrix"], np.float64))
            scale = np.asarray(source.params["max_conc"], np.float64) / np.asarray(
                target.params["max_conc"], np.float64
            )
            he_ref = np.asarray(target.params["stain_matrix"], np.float64)
            self._od_map = he_ref @ (unmix / scale[:, None])
            self._od_lut = -np.log((np.arange(256, dtype=np.float64) + 1) / _IO)
        else:
            self._mu_src = np.asarray(source.params["means"], np.float32)
            self._sd_src = np.asarray(source.params["stds"], np.float32)
            self._mu_ref = np.asarray(target.params["means"], np.float32)
            self._sd_ref = np.asarray(target.params["stds"], np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = np.asarray(img)[..., :3]
        out = self._macenko(img) if self.method == "macenko" else self._reinhard(img)
        if self.keep_glass:
            w = (img.min(-1).astype(np.float32) - _GLASS_LO) / (_GLASS_HI - _GLASS_LO)
            w = np.clip(w, 0, 1)[..., None]
            if w.any():
                out = (w * img + (1 - w) * out + 0.5).astype(np.uint8)
        return out

    def _macenko(self, img: np.ndarray) -> np.ndarray:
        # torchstain's NumpyMacenkoNormalizer.normalize with the source fit held fixed.
        h, w, c = img.shape
        od = self._od_lut[img.reshape(-1, 3)]
        out = np.exp(-(od @ self._od_map.T))
        out *= _IO
        np.minimum(out, 255, out=out)
        return out.reshape(h, w, c).astype(np.uint8)

    def _reinhard(self, img: np.ndarray) -> np.ndarray:
        # torchstain's NumpyReinhardNormalizer.normalize with the source statistics fixed.
        from torchstain.numpy.utils.lab2rgb import lab2rgb
        from torchstain.numpy.utils.rgb2lab import rgb2lab
        from torchstain.numpy.utils.split import lab_merge, lab_split
        from torchstain.numpy.utils.stats import standardize

        labs = lab_split(rgb2lab(img.astype("float32") / 255))
        result = [
            standardize(x, mu, sd) * sd_t + mu_t
            for x, mu, sd, mu_t, sd_t in zip(
                labs, self._mu_src, self._sd_src, self._mu_ref, self._sd_ref, strict=True
            )
        ]
        return (lab2rgb(lab_merge(*result)) * 255).astype("uint8")

    def describe(self) -> dict[str, Any]:
        """Provenance: the target and this slide's source fit."""
        return {
            "target": self.target.to_dict(),
            "source": self.source.to_dict(),
            "keep_glass": self.keep_glass,
        }


def stain_normalizer(
    slide: Slide, target: StainTarget, *, keep_glass: bool = True
) -> StainNormalizer:
    """A per-tile transform taking ``slide``'s stain to ``target`` (source fitted once).

    Parameters
    ----------
    slide
        The slide whose tiles will be normalised; its stain is fitted on its thumbnail's
        tissue.
    target
        From :func:`fit_stain_target` (or :meth:`StainTarget.from_dict`).
    keep_glass
        Keep near-white pixels white.

    Returns
    -------
    A picklable :class:`StainNormalizer` (use it in DataLoader workers).

    Example
    -------
    >>> norm = mm.pp.stain_normalizer(slide, target)
    >>> tile = norm(mm.io.read_tiles(slide, tiles[:1])[0])
    """
    source = fit_stain_target(slide, method=target.method)
    return StainNormalizer(source, target, keep_glass=keep_glass)


def normalize_stain(
    image: np.ndarray, target: StainTarget, *, keep_glass: bool = True
) -> np.ndarray:
    """Normalise one RGB image to ``target``, fitting the image's own stain first.

    Parameters
    ----------
    image
        ``uint8 (h, w, 3)``; it needs some tissue (a tile of glass has no stain to fit).
    target
        From :func:`fit_stain_target`.
    keep_glass
        Keep near-white pixels white.

    Returns
    -------
    The normalised ``uint8 (h, w, 3)`` image.

    Example
    -------
    >>> out = mm.pp.normalize_stain(img, mm.pp.fit_stain_target("ref.png"))
    """
    source = fit_stain_target(image, method=target.method)
    return StainNormalizer(source, target, keep_glass=keep_glass)(image)
