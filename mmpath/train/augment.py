"""H&E augmentations, seeded per sample so training is reproducible with any worker count.

Everything works on ``uint8`` ``(H, W, 3)`` arrays with an explicit
``numpy.random.Generator`` (see :func:`sample_rng`): a sample's augmentation depends only on
``(seed, epoch, index)``, never on which DataLoader worker drew it, so a resumed or
distributed run replays exactly the same pixels.

The set suits H&E tiles, which have no canonical orientation and vary mostly in stain:

* dihedral transforms (horizontal/vertical flips, 90° rotations);
* colour jitter (brightness, contrast, saturation);
* HED stain jitter (Tellez et al., 2018): colour deconvolution into haematoxylin, eosin and
  DAB optical densities (skimage's ``hed_from_rgb`` matrix), each stain scaled by
  ``U(1 - a, 1 + a)`` and shifted by ``U(-b, b)``, and back (``rgb_from_hed``);
* Macenko stain jitter (torchstain's ``NumpyMacenkoAugmentor``, seeded): the tile's own
  haematoxylin/eosin vectors and concentrations (:func:`mmpath.pp.stain.macenko_fit`), each
  concentration scaled by ``U(1 - s1, 1 + s1)`` and shifted by ``U(-s2, s2)``, re-mixed with
  the same vectors; glass stays glass, and a tile without stain is left as it is;
* for self-supervised views: random resized crops, Gaussian blur and grayscale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["AugmentConfig", "Augment", "sample_rng", "to_tensor", "hed_jitter", "stain_jitter"]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly (0 disables a jitter)."""

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1  # factor drawn from U(1 - v, 1 + v)
    contrast: float = 0.1
    saturation: float = 0.1
    hed_scale: float = 0.05  # stain channel scale U(1 - v, 1 + v)
    hed_shift: float = 0.01  # stain channel shift U(-v, v) (optical-density units)
    crop_scale: tuple[float, float] = (1.0, 1.0)  # area fraction of random resized crops
    blur_prob: float = 0.0
    grayscale_prob: float = 0.0
    stain_sigma1: float = 0.0  # Macenko concentration scale U(1 - v, 1 + v) (0: off)
    stain_sigma2: float = 0.0  # Macenko concentration shift U(-v, v)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must be (lo, hi) with 0 < lo <= hi <= 1")
        names = ("brightness", "contrast", "saturation", "hed_scale", "hed_shift")
        for name in (*names, "stain_sigma1", "stain_sigma2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
        if not (0 <= self.blur_prob <= 1 and 0 <= self.grayscale_prob <= 1):
            raise ValueError("blur_prob and grayscale_prob must be in [0, 1]")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation (validation): resize only."""
        return cls(False, False, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def ssl(cls) -> AugmentConfig:
        """Heavy views for self-supervised pretraining (SimCLR-like, stain-aware)."""
        return cls(True, True, 0.4, 0.4, 0.3, 0.1, 0.03, (0.3, 1.0), 0.5, 0.2)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch."""
    return np.random.default_rng([seed, epoch, index])


def _gray(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    """Perturb haematoxylin, eosin and DAB stain channels (float RGB in [0, 1] in and out).

    Colour deconvolution with skimage's Ruifrok-Johnston matrices (``hed_from_rgb`` /
    ``rgb_from_hed``, the ones ``skimage.color.rgb2hed`` uses) in optical density, without
    ``rgb2hed``'s clipping of negative concentrations, so zero jitter is the identity for every
    colour (not only those inside the stain cone).
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log(np.clip(img, 1e-6, 1.0))
    stains = od @ hed_from_rgb
    alpha = rng.uniform(1 - scale, 1 + scale, size=3)
    beta = rng.uniform(-shift, shift, size=3)
    od = (stains * alpha + beta) @ rgb_from_hed
    return np.clip(np.exp(-od), 0.0, 1.0).astype(np.float32)


def stain_jitter(
    img: np.ndarray, rng: np.random.Generator, sigma1: float, sigma2: float
) -> np.ndarray:
    """Macenko stain augmentation of a uint8 tile (torchstain's augmentor, with ``rng``).

    The draws come in torchstain's order (scale then shift, haematoxylin then eosin), so with
    the same numbers the result equals ``NumpyMacenkoAugmentor.augment`` (tested). Glass is
    kept; a tile with no stained pixels is returned unchanged.
    """
    from mmpath.pp.stain import _GLASS_HI, _GLASS_LO, _IO, macenko_fit

    try:
        he, conc, _ = macenko_fit(img)
    except (ValueError, np.linalg.LinAlgError):
        return img
    conc = conc.copy()
    for i in range(conc.shape[0]):
        conc[i, :] *= rng.uniform(1 - sigma1, 1 + sigma1)
        conc[i, :] += rng.uniform(-sigma2, sigma2)
    out = np.multiply(_IO, np.exp(-he.dot(conc)))
    out[out > 255] = 255
    out = np.reshape(out.T, img.shape).astype(np.uint8)
    w = np.clip((img.min(-1).astype(np.float32) - _GLASS_LO) / (_GLASS_HI - _GLASS_LO), 0, 1)
    if w.any():
        out = (w[..., None] * img + (1 - w[..., None]) * out + 0.5).astype(np.uint8)
    return out


class Augment:
    """Callable ``(uint8 image, rng) -> uint8 (size, size, 3)`` applying an AugmentConfig.

    Example
    -------
    >>> aug = Augment(AugmentConfig(), size=224)
    >>> out = aug(tile, sample_rng(0, epoch, i))
    """

    def __init__(self, cfg: AugmentConfig, size: int) -> None:
        self.cfg, self.size = cfg, int(size)

    def _crop_resize(self, img: np.ndarray, rng: np.random.Generator) -> Image.Image:
        h, w = img.shape[:2]
        pil = Image.fromarray(img)
        lo, hi = self.cfg.crop_scale
        box = (0, 0, w, h)
        if hi < 1 or lo < 1:
            area = rng.uniform(lo, hi) * h * w
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw = int(round(min(w, np.sqrt(area * ratio))))
            ch = int(round(min(h, np.sqrt(area / ratio))))
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            box = (x0, y0, x0 + cw, y0 + ch)
        if box == (0, 0, w, h) and (w, h) == (self.size, self.size):
            return pil
        return pil.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        pil = self._crop_resize(np.ascontiguousarray(img[..., :3]), rng)
        if cfg.blur_prob and rng.random() < cfg.blur_prob:
            radius = rng.uniform(0.1, 2.0) * self.size / 224
            pil = pil.filter(ImageFilter.GaussianBlur(radius))
        out = np.asarray(pil)
        if cfg.flips:
            if rng.random() < 0.5:
                out = out[:, ::-1]
            if rng.random() < 0.5:
                out = out[::-1]
        if cfg.rot90:
            out = np.rot90(out, int(rng.integers(0, 4)))
        if cfg.stain_sigma1 or cfg.stain_sigma2:
            out = stain_jitter(np.ascontiguousarray(out), rng, cfg.stain_sigma1, cfg.stain_sigma2)
        jitter = cfg.brightness or cfg.contrast or cfg.saturation
        hed = cfg.hed_scale or cfg.hed_shift
        gray = cfg.grayscale_prob and rng.random() < cfg.grayscale_prob
        if not (jitter or hed or gray):
            return np.ascontiguousarray(out)
        x = out.astype(np.float32) / 255.0
        if hed:
            x = hed_jitter(x, rng, cfg.hed_scale, cfg.hed_shift)
        if cfg.brightness:
            x = x * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        if cfg.contrast:
            mean = _gray(x).mean()
            x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
        if cfg.saturation:
            g = _gray(x)[..., None]
            x = g + (x - g) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        if gray:
            x = np.repeat(_gray(x)[..., None], 3, axis=2)
        return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def to_tensor(img: np.ndarray, mean, std):
    """uint8 ``(H, W, 3)`` -> normalised float ``(3, H, W)`` torch tensor
    (:func:`mmpath.models.transform.to_tensor`, the one transform)."""
    from mmpath.models.transform import to_tensor as _to_tensor

    return _to_tensor(img, mean, std)
