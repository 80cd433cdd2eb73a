"""Preprocessing: slide -> tissue mask -> tile table.

Example
-------
>>> mask = mm.pp.detect_tissue(slide)
>>> tiles = mm.pp.tile(slide, 224, mpp=0.5, tissue=mask)
"""

from mmpath.pp.annotate import annotate_tiles
from mmpath.pp.mpp import MppEstimate, estimate_mpp
from mmpath.pp.spots import spot_tiles
from mmpath.pp.stain import (
    StainNormalizer,
    StainTarget,
    fit_stain_target,
    normalize_stain,
    stain_normalizer,
)
from mmpath.pp.tiling import plan_read, tile
from mmpath.pp.tissue import TissueMask, detect_tissue

__all__ = [
    "detect_tissue",
    "TissueMask",
    "tile",
    "plan_read",
    "annotate_tiles",
    "spot_tiles",
    "estimate_mpp",
    "MppEstimate",
    "fit_stain_target",
    "normalize_stain",
    "stain_normalizer",
    "StainTarget",
    "StainNormalizer",
]
