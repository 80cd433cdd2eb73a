"""Low-resolution reads of a whole slide, in strips so memory stays bounded."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Strip budget: pixels read at once from the source level.
_STRIP_PIXELS = 8_000_000


def read_downsampled(slide, downsample: float) -> np.ndarray:
    """The whole slide at ``downsample`` (relative to level 0), as RGB ``uint8``.

    Reads from the deepest pyramid level not coarser than ``downsample`` and area-averages
    the rest, strip by strip. Output size is ``ceil(W / downsample) x ceil(H / downsample)``.
    """
    downsample = max(1.0, float(downsample))
    W, H = slide.dimensions
    ow, oh = max(1, math.ceil(W / downsample)), max(1, math.ceil(H / downsample))
    level = slide.best_level_for_downsample(downsample)
    lw, lh = slide.level_dimensions[level]
    lds = slide.level_downsamples[level]
    fy = lh / oh  # level rows per output row
    rows_per_strip = max(1, int(_STRIP_PIXELS / max(1, lw) / max(fy, 1.0)))
    out = np.empty((oh, ow, 3), np.uint8)
    for r0 in range(0, oh, rows_per_strip):
        r1 = min(oh, r0 + rows_per_strip)
        ly0 = int(round(r0 * fy))
        ly1 = min(lh, max(ly0 + 1, int(round(r1 * fy))))
        strip = slide.read_region((0, int(ly0 * lds)), level, (lw, ly1 - ly0))
        if strip.shape[1] != ow or strip.shape[0] != r1 - r0:
            strip = np.asarray(Image.fromarray(strip).resize((ow, r1 - r0), Image.Resampling.BOX))
        out[r0:r1] = strip
    return out
