"""Reading and writing slides and tile tables.

Example
-------
>>> slide = mm.io.open_slide("slide.svs")
>>> tiles = mm.pp.tile(slide, 224, mpp=0.5)
>>> batch = mm.io.read_tiles(slide, tiles[:64])
"""

from mmpath.io.annotations import Annotations, read_annotations
from mmpath.io.metadata import join_metadata
from mmpath.io.slide import ArraySlide, OpenSlideSlide, Slide, open_slide
from mmpath.io.table import concat, read_h5ad, write_h5ad
from mmpath.io.tiles import TileDataset, TileReader, iter_tiles, open_slide_from, read_tiles
from mmpath.io.visium import read_visium, spot_scalefactors, visium_image

__all__ = [
    "Slide",
    "OpenSlideSlide",
    "ArraySlide",
    "open_slide",
    "open_slide_from",
    "read_tiles",
    "iter_tiles",
    "TileDataset",
    "TileReader",
    "read_h5ad",
    "write_h5ad",
    "concat",
    "read_annotations",
    "Annotations",
    "join_metadata",
    "read_visium",
    "spot_scalefactors",
    "visium_image",
]
