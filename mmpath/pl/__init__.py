"""Pictures: tiles over thumbnails, embeddings, galleries.

Example
-------
>>> mm.pl.tiles(tiles, slide, color="tissue_frac", save="grid.png")
"""

from mmpath.pl.tiles import tiles

__all__ = ["tiles"]

from mmpath.pl.embedding import embedding  # noqa: E402

__all__ = [*globals().get("__all__", []), "embedding"]

from mmpath.pl.gallery import gallery  # noqa: E402

__all__ = [*globals().get("__all__", []), "gallery"]
