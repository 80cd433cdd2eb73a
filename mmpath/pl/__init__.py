"""Pictures: tiles over thumbnails, embeddings, galleries.

Example
-------
>>> mm.pl.tiles(tiles, slide, color="tissue_frac", save="grid.png")
"""

from mmpath.pl.embedding import embedding
from mmpath.pl.gallery import gallery
from mmpath.pl.probe import confusion_matrix, roc
from mmpath.pl.tiles import tiles

__all__ = ["tiles", "embedding", "gallery", "confusion_matrix", "roc"]
