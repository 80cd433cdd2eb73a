"""Names of every slot mmpath reads or writes in a tile table (AnnData).

Code never spells these as string literals elsewhere: import them from here.
"""

from __future__ import annotations

import re

# obs columns
SLIDE_ID = "slide_id"  # categorical slide identifier
X = "x"  # level-0 pixels, top-left of the tile
Y = "y"
TISSUE_FRAC = "tissue_frac"  # fraction of the tile covered by detected tissue
TILE_OK = "tile_ok"  # False where a tile could not be read (corrupt region)

# obsm
SPATIAL = "spatial"  # tile centres in level-0 pixels (scanpy/squidpy convention)
REP_PREFIX = "X_"
PROJ_SUFFIX = "_proj"  # normalised joint image-text space

# uns
UNS = "mmpath"  # all provenance lives under uns["mmpath"]
UNS_VERSION = "version"
UNS_SLIDES = "slides"  # slide_id -> {path, mpp, dims, vendor, tiling: {...}}
UNS_TILING = "tiling"  # per-slide tiling spec inside UNS_SLIDES[slide_id]
UNS_EMBEDDINGS = "embeddings"  # obsm key -> {encoder, weights, data config, version}
UNS_RUNS = "runs"  # step name -> resolved parameters

_SLUG_BAD = re.compile(r"[^a-z0-9_.-]")


def slugify(name: str) -> str:
    """A valid h5ad key fragment for a model name (every char outside [a-z0-9_.-] -> "_")."""
    return _SLUG_BAD.sub("_", name.lower())


def rep_key(slug: str, *, proj: bool = False) -> str:
    """obsm key of an encoder's embedding: ``X_<slug>`` or ``X_<slug>_proj``."""
    return f"{REP_PREFIX}{slug}{PROJ_SUFFIX if proj else ''}"


def obs_name(slide_id: str, i: int) -> str:
    """Unique row name of tile ``i`` of ``slide_id``."""
    return f"{slide_id}:{i}"
