"""Synthetic spatial transcriptomics with a known link between morphology and expression.

Each sample is an H&E-like image (pink eosin, purple nuclei) with a grid of Visium-like spots.
Two smooth random fields drive the picture: the nuclei density and the eosin intensity. The
genes come in three kinds, so a test knows exactly what a model can and cannot learn:

* ``MORPH_*``: log-rate a linear function of the local nuclei density or eosin intensity
  (visible in the spot's pixels);
* ``SAMPLE_*``: log-rate shifted by a per-sample latent ``z`` that the image does not show;
  the per-sample genomic vector (``genomic``) carries ``z`` plus noise dimensions, so fusion
  can use it. It is generated from ``z`` directly, never from the spot counts;
* ``NOISE_*``: constant rate, pure Poisson noise.

Counts are Poisson with a per-spot library size, so ``normalize_total`` matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SyntheticST", "synthetic_st"]

EOSIN = np.array([232, 150, 190], np.float32)
HEMATOXYLIN = np.array([80, 50, 140], np.float32)
BACKGROUND = np.array([243, 241, 244], np.float32)


@dataclass
class SyntheticST:
    """What :func:`synthetic_st` makes.

    Attributes
    ----------
    samples
        ``(st, slide)`` pairs: spots x genes counts with ``obsm["spatial"]`` in the slide's
        level-0 pixels and Visium-style scale factors, and the H&E-like slide.
    genomic
        Per-sample genomic vectors (rows indexed by sample id = slide id).
    morph_genes, sample_genes, noise_genes
        Gene names by kind.
    """

    samples: list[tuple[object, object]]
    genomic: pd.DataFrame
    morph_genes: list[str] = field(default_factory=list)
    sample_genes: list[str] = field(default_factory=list)
    noise_genes: list[str] = field(default_factory=list)


def _smooth_field(rng: np.random.Generator, h: int, w: int, n_waves: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w), np.float32)
    for _ in range(n_waves):
        kx, ky = rng.uniform(0.5, 2.0, 2) * 2 * np.pi / np.array([w, h])
        ph = rng.uniform(0, 2 * np.pi)
        out += np.sin(kx * xx + ky * yy * rng.choice([-1, 1]) + ph)
    out -= out.min()
    return out / max(out.max(), 1e-6)


def _render(
    rng: np.random.Generator, density: np.ndarray, eosin: np.ndarray, nucleus_r: int
) -> np.ndarray:
    h, w = density.shape
    tint = 0.35 + 0.65 * eosin[..., None]
    img = BACKGROUND * (1 - tint) + EOSIN * tint
    # Nuclei: a Poisson number per pixel-block proportional to the density field.
    p = 0.04 * density / (nucleus_r**2)
    centres = np.argwhere(rng.random((h, w)) < p)
    r = nucleus_r
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (yy**2 + xx**2) <= r * r
    mask = np.zeros((h + 2 * r, w + 2 * r), bool)
    for cy, cx in centres:
        mask[cy : cy + 2 * r + 1, cx : cx + 2 * r + 1] |= disc
    img[mask[r : r + h, r : r + w]] = HEMATOXYLIN
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_st(
    n_samples: int = 4,
    *,
    grid: int = 12,
    n_morph: int = 6,
    n_sample_genes: int = 0,
    n_noise: int = 14,
    mpp: float = 2.0,
    spacing_um: float = 100.0,
    diameter_um: float = 55.0,
    genomic_dims: int = 4,
    directory: str | Path | None = None,
    seed: int = 0,
) -> SyntheticST:
    """Make ``n_samples`` synthetic Visium-like samples with known gene drivers.

    Parameters
    ----------
    n_samples
        Samples (one slide each).
    grid
        Spots per side of the square spot grid.
    n_morph
        Genes driven by morphology (half by nuclei density, half by eosin intensity, with
        alternating signs).
    n_sample_genes
        Genes shifted by the per-sample latent carried by the genomic vector.
    n_noise
        Pure-noise genes.
    mpp
        µm per pixel of the images.
    spacing_um, diameter_um
        Spot centre spacing and spot diameter in µm.
    genomic_dims
        Length of the genomic vector (the first dimension carries the latent, the rest noise).
    directory
        Write each image as ``<directory>/<sample>.png`` so tile tables can reopen it; in
        memory (ArraySlide without a path) when ``None``.
    seed
        Random seed.

    Returns
    -------
    A :class:`SyntheticST`.

    Example
    -------
    >>> data = mm.datasets.synthetic_st(4, n_sample_genes=3)
    >>> st, slide = data.samples[0]
    """
    import anndata as ad

    from mmpath import _keys as K
    from mmpath.io.slide import ArraySlide, open_slide

    rng = np.random.default_rng(seed)
    spacing, diam = spacing_um / mpp, diameter_um / mpp
    margin = int(np.ceil(diam))
    side = int(margin * 2 + spacing * (grid - 1))
    names = (
        [f"MORPH_{i}" for i in range(n_morph)]
        + [f"SAMPLE_{i}" for i in range(n_sample_genes)]
        + [f"NOISE_{i}" for i in range(n_noise)]
    )
    n_genes = len(names)
    base = rng.uniform(0.5, 2.0, n_genes)  # log-rate per 1,000 counts
    signs = np.where(np.arange(n_morph) % 2 == 0, 1.0, -1.0)
    z = rng.normal(0, 1, n_samples)
    genomic = np.column_stack(
        [z + rng.normal(0, 0.1, n_samples), rng.normal(0, 1, (n_samples, max(genomic_dims - 1, 0)))]
    )
    ids = [f"sample{i}" for i in range(n_samples)]
    samples = []
    for s, sid in enumerate(ids):
        density = _smooth_field(rng, side, side)
        eosin = _smooth_field(rng, side, side)
        img = _render(rng, density, eosin, nucleus_r=max(1, round(3.0 / mpp)))
        g = np.arange(grid) * spacing + margin
        cx, cy = np.meshgrid(g, g)
        xy = np.column_stack([cx.ravel(), cy.ravel()])
        ix, iy = xy[:, 0].astype(int), xy[:, 1].astype(int)
        # Spot truth: the field averaged over the spot disc is close to its centre value.
        d, e = density[iy, ix], eosin[iy, ix]
        eta = np.tile(base, (len(xy), 1))
        for j in range(n_morph):
            drive = d if j < (n_morph + 1) // 2 else e
            eta[:, j] += 1.5 * signs[j] * (drive - 0.5)
        for j in range(n_sample_genes):
            eta[:, n_morph + j] += 0.8 * z[s]
        libsize = rng.lognormal(np.log(3000), 0.3, len(xy))
        rate = np.exp(eta)
        rate = rate / rate.sum(1, keepdims=True) * libsize[:, None]
        counts = rng.poisson(rate).astype(np.float32)
        obs = pd.DataFrame(
            {
                "in_tissue": 1,
                "array_row": np.repeat(np.arange(grid), grid),
                "array_col": np.tile(np.arange(grid), grid),
                "true_density": d.astype(np.float32),
                "true_eosin": e.astype(np.float32),
            },
            index=[f"{sid}-{i:04d}-1" for i in range(len(xy))],
        )
        st = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=names))
        st.obsm[K.SPATIAL] = xy.astype(np.float64)
        st.uns["spatial"] = {
            sid: {
                "scalefactors": {
                    "spot_diameter_fullres": float(diam),
                    "tissue_hires_scalef": 1.0,
                    "tissue_lowres_scalef": 1.0,
                    "fiducial_diameter_fullres": float(diam * 1.6),
                },
                "metadata": {"synthetic": True},
            }
        }
        if directory is not None:
            from PIL import Image

            path = Path(directory) / f"{sid}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            slide = open_slide(path, mpp=mpp, slide_id=sid)
        else:
            slide = ArraySlide(img, mpp=mpp, slide_id=sid)
        samples.append((st, slide))
    gen = pd.DataFrame(genomic, index=ids, columns=[f"g{i}" for i in range(genomic.shape[1])])
    return SyntheticST(
        samples,
        gen,
        names[:n_morph],
        names[n_morph : n_morph + n_sample_genes],
        names[n_morph + n_sample_genes :],
    )
