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
* ``typicality`` (**the default** ``<key>_score``): the Mahalanobis distance of the pair
  ``(log recon error, complexity)`` from the normal tiles' joint Gaussian. A tile is scored
  anomalous when its error is unusual *for its complexity* (the minor axis of the fitted
  ellipse is the ``corrected`` direction) or when its complexity itself is atypical of normal
  tissue, so it works in both directions: on synthetic tiles whose anomalies are simpler than
  normal ones (raw reconstruction error AUROC 0.00) and busier (raw 1.00) it scores 1.00 in
  both, and 1.00 on ink/debris (tests/tl/test_anomaly_complexity.py).
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

    Example
    -------
    >>> cal = ComplexityCalibration.fit(recon_error, bits_per_px)
    >>> cal.typicality(recon_error_new, bits_per_px_new)
    """

    mean: tuple[float, float]
    cov_inv: tuple[tuple[float, float], tuple[float, float]]
    intercept: float
    slope: float
    n: int

    @classmethod
    def fit(cls, recon_error: np.ndarray, complexity: np.ndarray) -> ComplexityCalibration:
        """Fit on the scores of normal tiles (at least 3)."""
        f = _features(recon_error, complexity)
        if len(f) < 3:
            raise ValueError(f"need at least 3 normal tiles to calibrate, got {len(f)}")
        mean = f.mean(0)
        cov = np.cov(f.T) + 1e-6 * np.eye(2)
        slope, intercept = np.polyfit(f[:, 1], f[:, 0], 1) if f[:, 1].std() > 0 else (0.0, mean[0])
        inv = np.linalg.inv(cov)
        return cls(
            (float(mean[0]), float(mean[1])),
            ((float(inv[0, 0]), float(inv[0, 1])), (float(inv[1, 0]), float(inv[1, 1]))),
            float(intercept),
            float(slope),
            len(f),
        )

    def corrected(self, recon_error: np.ndarray, complexity: np.ndarray) -> np.ndarray:
        """``log(recon error)`` minus what normal tiles of that complexity get."""
        f = _features(recon_error, complexity)
        return (f[:, 0] - (self.intercept + self.slope * f[:, 1])).astype(np.float32)

    def typicality(self, recon_error: np.ndarray, complexity: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of ``(log recon error, complexity)`` from the normal tiles."""
        g = _features(recon_error, complexity) - np.asarray(self.mean)
        d2 = np.einsum("ij,jk,ik->i", g, np.asarray(self.cov_inv), g)
        return np.sqrt(np.maximum(d2, 0)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "cov_inv": [list(r) for r in self.cov_inv],
            "intercept": self.intercept,
            "slope": self.slope,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComplexityCalibration:
        m, c = d["mean"], d["cov_inv"]
        return cls(
            (float(m[0]), float(m[1])),
            ((float(c[0][0]), float(c[0][1])), (float(c[1][0]), float(c[1][1]))),
            float(d["intercept"]),
            float(d["slope"]),
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
