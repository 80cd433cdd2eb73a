"""Demo step: open the bundled sample, detect tissue, tile it, draw the grid."""

from __future__ import annotations

import warnings

import numpy as np

from mmpath import _keys as K
from mmpath import datasets, io, pl, pp
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

TILE_SIZE = 224
TILE_MPP = 0.5


def run(ctx: DemoContext) -> list[Section]:
    slide = datasets.sample_slide()
    mask = pp.detect_tissue(slide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tiles = pp.tile(slide, TILE_SIZE, mpp=TILE_MPP, min_tissue=0.5, tissue=mask)
    io.write_h5ad(tiles, ctx.out / "tiles.h5ad")
    ctx.state.update(slide=slide, tissue=mask, tiles=tiles)
    spec = tiles.uns[K.UNS][K.UNS_SLIDES][slide.slide_id][K.UNS_TILING]
    stats = {
        "slide": f"{slide.slide_id} ({slide.vendor}, CC0)",
        "size (level 0)": f"{slide.dimensions[0]} x {slide.dimensions[1]} px",
        "slide mpp": slide.mpp,
        "tissue fraction": round(mask.tissue_fraction, 3),
        "tissue regions": len(mask.contours),
        "tile size / target mpp": f"{TILE_SIZE} px at {TILE_MPP} µm/px",
        "effective mpp": spec["mpp_effective"],
        "read level / read size": f"{spec['level']} / {spec['read_size']} px (no resampling)"
        if spec["read_size"] == TILE_SIZE
        else f"{spec['level']} / {spec['read_size']} px",
        "tiles kept / grid": f"{tiles.n_obs} / {spec['n_grid']}",
        "mean tissue fraction of kept tiles": float(np.mean(tiles.obs[K.TISSUE_FRAC]))
        if tiles.n_obs
        else 0.0,
    }
    fig = pl.tiles(tiles, slide, color=K.TISSUE_FRAC, tissue=mask)
    body = table_html(stats) + figure_html(fig, "tile grid over the thumbnail")
    return [Section("Tissue detection and tiling", body)]
