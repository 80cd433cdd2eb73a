"""Input complexity of image tiles: lossless compressed size in bits per pixel.

Likelihood-style anomaly scores (a VAE's reconstruction error, a latent NLL) mostly measure
how *busy* a tile is, not how unusual it is: a smooth out-of-distribution tile reconstructs
better than a textured normal one and scores as more normal (Nalisnick et al. 2019; Serrà et
al. 2020, "Input complexity and out-of-distribution detection with likelihood-based
generative models", ICLR). Serrà et al. subtract a generic lossless compressor's code length
(PNG, JPEG2000, FLIF) from the model's NLL. :func:`png_bits_per_pixel` is that estimate: the
size of the tile's PNG (zlib level 9, PIL's encoder) in bits per pixel.

:class:`ComplexityCalibration` is fitted on the *normal training tiles* at the end of
``mmpath train anomaly`` and stored in the model folder. It gives two corrected scores:

* ``corrected`` (Serrà et al.'s idea with the scale learnt rather than assumed): the residual
  of ``log(recon error)`` after the least-squares line on complexity fitted on normal tiles,
  i.e. "more error than normal tiles *of this complexity* get". One-sided: it catches tiles the
  model reconstructs worse than expected (ink, and smooth tiles unlike the training data), but
  a busier-than-normal tile whose extra error is explained by its complexity slips through
  (synthetic busy tiles: AUROC 0.67).
* ``typicality`` (**the default** ``<key>_score``): ``sqrt(max(z_r, 0)^2 + z_c^2)`` with
  ``z_r`` the corrected residual and ``z_c`` the complexity, both standardised over the normal
  tiles: a one-sided Mahalanobis distance of ``(log recon error, complexity)``. A tile is
  anomalous when its error is higher than normal tiles *of its complexity* get, or when its
  complexity itself is atypical of normal tissue, so it works in both directions: on
  synthetic tiles whose anomalies are simpler than normal ones (raw reconstruction error
  AUROC 0.00) and busier (raw 1.00) it scores 1.00 in both, and 1.00 on ink/debris
  (tests/tl/test_anomaly.py). It is the default because it is the only score here that
  holds in both directions; on the real stroma nuclei (5 neoplastic cells only) it scores
  0.82 where the raw error happens to score 0.87 (``tools/real_data_figures.py anomaly``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["png_bits_per_pixel", "ComplexityCalibration", "vae_scores"]


def png_bits_per_pixel(images: np.ndarray) -> np.ndarray:
    """PNG code length of each RGB ``uint8`` tile ``(n, H, W, 3)``, in bits per pixel ``(n,)``.

    Example
    -------
    >>> png_bits_per_pixel(np.zeros((1, 32, 32, 3), np.uint8))  # a flat tile: ~0.1 bit/px
    """
    from PIL import Image

    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise ValueError(f"expected (n, H, W, 3) uint8 tiles, got {imgs.shape} {imgs.dtype}")
    out = np.empty(len(imgs), np.float32)
    for i, img in enumerate(imgs):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell() / (img.shape[0] * img.shape[1])
    return out


@dataclass(frozen=True)
class ComplexityCalibration:
    """How ``(log recon error, complexity)`` are distributed over normal training tiles.

    ``intercept + slope * complexity`` is the least-squares line of log error on complexity;
    ``resid_std`` the spread of the residuals around it, ``complexity_std`` that of the
    complexity (both with ``ddof=1``).

    Example
    -------
    >>> cal = ComplexityCalibration.fit(recon_error, bits_per_px)
    >>> cal.typicality(recon_error_new, bits_per_px_new)
    """

    mean: tuple[float, float]
    intercept: float
    slope: float
    resid_std: float
    complexity_std: float
    n: int

    @classmethod
    def fit(cls, recon_error: np.ndarray, complexity: np.ndarray) -> ComplexityCalibration:
        """Fit on the scores of normal tiles (at least 3)."""
        f = _features(recon_error, complexity)
        if len(f) < 3:
            raise ValueError(f"need at least 3 normal tiles to calibrate, got {len(f)}")
        mean = f.mean(0)
        cov = np.cov(f.T)
        slope = cov[0, 1] / cov[1, 1] if cov[1, 1] > 0 else 0.0
        resid_var = cov[0, 0] - slope * cov[0, 1]
        return cls(
            (float(mean[0]), float(mean[1])),
            float(mean[0] - slope * mean[1]),
            float(slope),
            float(np.sqrt(max(resid_var, 0.0)) + 1e-6),
            float(np.sqrt(cov[1, 1]) + 1e-6),
            len(f),
        )

    def corrected(self, recon_error: np.ndarray, complexity: np.ndarray) -> np.ndarray:
        """``log(recon error)`` minus what normal tiles of that complexity get."""
        f = _features(recon_error, complexity)
        return (f[:, 0] - (self.intercept + self.slope * f[:, 1])).astype(np.float32)

    def typicality(self, recon_error: np.ndarray, complexity: np.ndarray) -> np.ndarray:
        """``sqrt(max(z_resid, 0)^2 + z_complexity^2)``: the default anomaly score.

        With both z-scores taken over the normal tiles, ``z_resid^2 + z_complexity^2`` is
        exactly the squared Mahalanobis distance of ``(log error, complexity)`` (the
        least-squares residual is uncorrelated with complexity). The residual counts only
        when positive: a tile reconstructed *better* than normal tiles of its complexity is
        no evidence of an anomaly (keeping it two-sided scored real stroma AUROC 0.67
        instead of 0.82).
        """
        zr = self.corrected(recon_error, complexity) / self.resid_std
        zc = (np.asarray(complexity, np.float64) - self.mean[1]) / self.complexity_std
        return np.sqrt(np.maximum(zr, 0) ** 2 + zc**2).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "intercept": self.intercept,
            "slope": self.slope,
            "resid_std": self.resid_std,
            "complexity_std": self.complexity_std,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComplexityCalibration:
        m = d["mean"]
        return cls(
            (float(m[0]), float(m[1])),
            float(d["intercept"]),
            float(d["slope"]),
            float(d["resid_std"]),
            float(d["complexity_std"]),
            int(d["n"]),
        )


def _features(recon_error: np.ndarray, complexity: np.ndarray) -> np.ndarray:
    e = np.log(np.maximum(np.asarray(recon_error, np.float64), 1e-12))
    return np.stack([e, np.asarray(complexity, np.float64)], 1)


def vae_scores(vae, x, calibration: ComplexityCalibration | None) -> dict[str, np.ndarray]:
    """Every anomaly score of a VAE for a batch ``x`` ``(B, 3, S, S)`` in ``[0, 1]``.

    Keys: ``recon_error``, ``latent_nll``, ``complexity`` (PNG bits/px of the tile the VAE
    sees) and, with a calibration, ``corrected`` and ``typicality``; ``error_map`` (tensor).

    Example
    -------
    >>> vae_scores(head.model, x, ComplexityCalibration.from_dict(head.extra["complexity"]))
    """
    out = vae.anomaly(x)
    u8 = (x.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    res = {
        "recon_error": out.recon_error.cpu().numpy(),
        "latent_nll": out.latent_nll.cpu().numpy(),
        "complexity": png_bits_per_pixel(u8),
        "error_map": out.error_map,
    }
    if calibration is not None:
        res["corrected"] = calibration.corrected(res["recon_error"], res["complexity"])
        res["typicality"] = calibration.typicality(res["recon_error"], res["complexity"])
    return res
