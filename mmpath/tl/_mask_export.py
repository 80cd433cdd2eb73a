"""Moved to :mod:`mmpath.io.masks` (kept so old imports work)."""

from mmpath.io.masks import (  # noqa: F401
    mask_to_features,
    palette,
    write_geojson,
    write_mask_png,
    write_mask_tiff,
)
