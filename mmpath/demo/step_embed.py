"""Demo step: embed the sample's tiles, then UMAP + leiden clusters drawn over the slide.

Uses ``mmpath-demo-vit``, the small SSL-pretrained demo ViT shipped in the package (see its
model card in ``mmpath/data/models/mmpath-demo-vit/README.md``): a demo model, not a
foundation model, and the report says so.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from mmpath import _keys as K
from mmpath import io, pl, tl
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

DEMO_ENCODER = "mmpath-demo-vit"  # shipped in the package; see its model card
SEED = 0

NOTE = (
    "<p class='note'><b>Demo model, not diagnostic.</b> These embeddings come from "
    "<b>{name}</b>, a {params:.1f}M-parameter ViT self-supervised (SimCLR-style) for a few "
    "minutes on the CPU on tiles of this sample slide plus synthetic tissue, by "
    "<code>tools/make_demo_models.py</code>. It is a demo model, not a foundation model: its "
    "features follow colour, stain density and texture, so clusters group tiles that look "
    "alike, not tissue types or diagnoses. It sees the central {size} px of each tile at "
    "{mpp} µm/px, the magnification it was trained at. For real work use a pathology "
    "foundation model (<code>mmpath list</code>).</p>"
)


def run(ctx: DemoContext) -> list[Section]:
    import scanpy as sc
    import torch

    from mmpath import models

    tiles = ctx.state["tiles"]
    slide = ctx.state["slide"]
    torch.manual_seed(SEED)
    encoder = models.create_encoder(DEMO_ENCODER)
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    t0 = time.perf_counter()
    tl.embed(tiles, encoder, slide=slide, batch_size=32, num_workers=0)
    seconds = time.perf_counter() - t0
    key = K.rep_key(encoder.info.slug)
    io.write_h5ad(tiles, ctx.out / "tiles.h5ad")

    n = tiles.n_obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba/umap chatter
        # Gaussian-kernel connectivities with sklearn's exact kNN: umap-learn's fuzzy simplicial
        # set is numba code compiled on every run (~20-60 s here), too slow for the demo.
        sc.pp.neighbors(
            tiles,
            use_rep=key,
            n_neighbors=max(2, min(15, n - 1)),
            random_state=SEED,
            method="gauss",
            transformer="sklearn",
        )
        sc.tl.umap(tiles, random_state=SEED)
        sc.tl.leiden(
            tiles,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=SEED,
            resolution=0.6,
        )
    ctx.state["tiles"] = tiles
    ctx.state["embedding_key"] = key

    rec = tiles.uns[K.UNS][K.UNS_EMBEDDINGS][key]
    counts = tiles.obs["leiden"].value_counts().sort_index()
    stats = {
        "encoder": f"{encoder.info.name} (SSL-pretrained demo model, not diagnostic)",
        "obsm key": f"{key} {tiles.obsm[key].shape}",
        "model input": f"{rec['data']['input_size']} px, preprocessing {rec['preprocess']}",
        "tiles embedded": n,
        "tiles/s (end to end, 1 process)": round(n / seconds, 1) if seconds else "n/a",
        "damaged tiles": rec["n_failed"],
        "leiden clusters": ", ".join(f"{c}: {v}" for c, v in counts.items()),
        "embedding spread (mean per-dim std)": float(np.mean(np.std(tiles.obsm[key], axis=0))),
    }
    fig_map = pl.tiles(
        tiles,
        slide,
        color="leiden",
        tissue=ctx.state.get("tissue"),
        title=f"leiden clusters of {key} (demo model, not diagnostic)",
    )
    fig_umap = pl.embedding(tiles, basis="umap", color="leiden")
    body = (
        NOTE.format(
            name=encoder.info.name,
            params=params,
            size=encoder.info.data.input_size,
            mpp=encoder.info.data.mpp,
        )
        + table_html(stats)
        + figure_html(fig_map, "leiden clusters over the thumbnail")
        + figure_html(fig_umap, "UMAP of the tile embeddings")
    )
    return [Section("Embedding, UMAP and clusters", body)]
