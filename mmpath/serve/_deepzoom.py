"""Deep Zoom (DZI) tiles of an mmpath :class:`~mmpath.io.Slide`.

The layout is the one openslide's ``openslide.deepzoom.DeepZoomGenerator`` serves (tile 254 px
plus 1 px of overlap on interior edges, levels halving down to 1x1), so any DZI viewer
(OpenSeadragon) reads it. The pixels come from mmpath's own readers (the tifffile fast path,
openslide, plain images), not from ``DeepZoomGenerator``, which only takes an
``openslide.OpenSlide``. The geometry follows the generator's four coordinate planes (tile
address, deep-zoom pixel, slide-level pixel, level-0 pixel); ``tests/serve/test_deepzoom.py``
checks every read region and tile size against the generator on real slides.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from mmpath.errors import SlideError

TILE_SIZE = 254
OVERLAP = 1
FORMAT = "jpeg"
JPEG_QUALITY = 85

_DZI = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
    'Overlap="{overlap}" TileSize="{tile}"><Size Width="{w}" Height="{h}"/></Image>\n'
)


@dataclass(frozen=True)
class TileRead:
    """What to read for one deep-zoom tile: a region of a slide level, and its final size."""

    location: tuple[int, int]  # level-0 top-left
    level: int  # slide level
    size: tuple[int, int]  # pixels to read at ``level``
    out_size: tuple[int, int]  # the tile's size in the deep-zoom level


class DeepZoom:
    """The deep-zoom pyramid of a slide: level sizes, tile grid, and tile reads.

    Parameters
    ----------
    slide
        An open :class:`~mmpath.io.Slide`.
    tile_size, overlap
        DZI tile size and overlap (254 and 1, as openslide's generator).
    """

    def __init__(self, slide, *, tile_size: int = TILE_SIZE, overlap: int = OVERLAP) -> None:
        self.slide = slide
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        size = tuple(int(v) for v in slide.dimensions)
        dims = [size]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            dims.append(size)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(reversed(dims))
        self.level_count = len(self.level_dimensions)
        self.level_tiles = tuple(
            (math.ceil(w / self.tile_size), math.ceil(h / self.tile_size))
            for w, h in self.level_dimensions
        )
        down0 = [2 ** (self.level_count - z - 1) for z in range(self.level_count)]
        self._slide_level = tuple(self._best_level(d) for d in down0)
        ds = slide.level_downsamples
        self._l_z = tuple(down0[z] / ds[self._slide_level[z]] for z in range(self.level_count))

    def _best_level(self, downsample: float) -> int:
        # openslide_get_best_level_for_downsample: the deepest level whose downsample is
        # below the wanted one, level 0 when even that is above it
        ds = self.slide.level_downsamples
        if downsample < ds[0]:
            return 0
        for i in range(1, len(ds)):
            if downsample < ds[i]:
                return i - 1
        return len(ds) - 1

    def dzi(self) -> str:
        """The DZI XML descriptor."""
        w, h = self.level_dimensions[-1]
        return _DZI.format(fmt=FORMAT, overlap=self.overlap, tile=self.tile_size, w=w, h=h)

    def tile_read(self, level: int, col: int, row: int) -> TileRead:
        """The region to read for tile ``(col, row)`` of deep-zoom ``level``.

        Raises
        ------
        mmpath.errors.SlideError
            The level or address does not exist.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"deep-zoom level {level} does not exist (0..{self.level_count - 1})")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise SlideError(f"deep-zoom tile {col}_{row} does not exist at level {level}")
        sl = self._slide_level[level]
        t = (col, row)
        lim = self.level_dimensions[level]
        tl = tuple(self.overlap * int(v != 0) for v in t)
        br = tuple(self.overlap * int(v != n - 1) for v, n in zip(t, (cols, rows), strict=True))
        z_size = tuple(
            min(self.tile_size, lim[i] - self.tile_size * t[i]) + tl[i] + br[i] for i in (0, 1)
        )
        l_loc = tuple(self._l_z[level] * (self.tile_size * t[i] - tl[i]) for i in (0, 1))
        ds = self.slide.level_downsamples[sl]
        l0 = tuple(int(ds * v) for v in l_loc)
        l_lim = self._level_dims(sl)
        l_size = tuple(
            int(min(math.ceil(self._l_z[level] * z_size[i]), l_lim[i] - math.ceil(l_loc[i])))
            for i in (0, 1)
        )
        return TileRead(l0, sl, l_size, z_size)  # type: ignore[arg-type]

    def _level_dims(self, level: int) -> tuple[int, int]:
        return tuple(int(v) for v in self.slide.level_dimensions[level])  # type: ignore[return-value]

    def tile_image(self, level: int, col: int, row: int):
        """One deep-zoom tile as a PIL RGB image (resampled as openslide's generator does)."""
        from PIL import Image

        r = self.tile_read(level, col, row)
        img = Image.fromarray(self.slide.read_region(r.location, r.level, r.size))
        if img.size != r.out_size:
            img.thumbnail(r.out_size, Image.Resampling.LANCZOS)
        return img

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes:
        """The JPEG bytes of one deep-zoom tile."""
        return encode_jpeg(self.tile_image(level, col, row))


def encode_jpeg(img, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a PIL image or uint8 array."""
    from PIL import Image

    if not isinstance(img, Image.Image):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
