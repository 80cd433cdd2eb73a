"""Hand-made morphology features of tiles: a tiny, encoder-free image representation.

Twelve numbers per tile: mean and standard deviation of R, G, B; the fractions of
haematoxylin-dark (nuclei), eosin-pink and near-white pixels; mean optical density; and two
texture measures (mean absolute horizontal/vertical gradient). They are what the synthetic
ST generator's genes depend on, so tests and the smoke demo can fit expression models in
seconds without a neural network, and they give a reference point for real encoders.
Tiles are streamed (:func:`mmpath.io.iter_tiles`): memory holds one batch of pixels.
"""

from __future__ import annotations

import logging

import numpy as np

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.io.slide import Slide

log = logging.getLogger(__name__)

__all__ = ["morphology_features", "MORPH_KEY", "MORPH_FEATURES"]

MORPH_KEY = K.rep_key("morph")
MORPH_FEATURES = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "frac_nuclei",
    "frac_eosin",
    "frac_white",
    "optical_density",
    "grad_x",
    "grad_y",
)


def _features(batch: np.ndarray) -> np.ndarray:
    x = batch.astype(np.float32) / 255.0
    n = len(x)
    flat = x.reshape(n, -1, 3)
    mean, std = flat.mean(1), flat.std(1)
    r, g, b = flat[..., 0], flat[..., 1], flat[..., 2]
    bright = flat.mean(-1)
    nuclei = ((bright < 0.45) & (b > r * 0.9)).mean(1)
    eosin = ((r > 0.75) & (g < 0.72) & (bright < 0.9)).mean(1)
    white = (bright > 0.9).mean(1)
    od = -np.log(np.clip(flat, 1 / 255, 1)).mean((1, 2))
    gray = x.mean(-1)
    gx = np.abs(np.diff(gray, axis=2)).mean((1, 2))
    gy = np.abs(np.diff(gray, axis=1)).mean((1, 2))
    return np.column_stack([mean, std, nuclei, eosin, white, od, gx, gy]).astype(np.float32)


def morphology_features(
    adata,
    slide: Slide | None = None,
    *,
    key_added: str = MORPH_KEY,
    batch_size: int = 256,
    num_workers: int = 0,
    remap=None,
) -> None:
    """Compute twelve colour/texture features per tile into ``obsm[key_added]`` (in place).

    Parameters
    ----------
    adata
        A tile table (e.g. from :func:`mmpath.pp.spot_tiles`).
    slide
        The open slide (required for in-memory slides); reopened from provenance if ``None``.
    key_added
        obsm key (``X_morph``); usable as ``use_rep`` of :func:`fit_expression`.
    batch_size, num_workers
        Streaming of tile pixels (see :func:`mmpath.io.iter_tiles`).
    remap
        Slide path remap for moved archives (see :func:`mmpath.io.open_slide_from`).

    Example
    -------
    >>> mm.tl.morphology_features(spots, slide)
    >>> model = mm.tl.fit_expression(spots, genes="hvg:50", use_rep="X_morph")
    """
    from mmpath.io.tiles import iter_tiles

    out = np.zeros((adata.n_obs, len(MORPH_FEATURES)), np.float32)
    for idx, batch in iter_tiles(
        adata, batch_size=batch_size, num_workers=num_workers, slide=slide, remap=remap
    ):
        if min(batch.shape[1:3]) < 2:
            raise DataError(
                f"tiles of {batch.shape[2]}x{batch.shape[1]} px are too small for morphology "
                "features (texture needs >= 2 px); tile at a finer mpp"
            )
        out[idx] = _features(batch)
    adata.obsm[key_added] = out
    node = _prov.root(adata).setdefault(K.UNS_EMBEDDINGS, {})
    node[key_added] = {
        "encoder": "morphology",
        "features": list(MORPH_FEATURES),
        "dim": len(MORPH_FEATURES),
    }
    log.info("%d tiles: morphology features in obsm[%r]", adata.n_obs, key_added)
