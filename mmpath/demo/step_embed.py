"""Demo step: embed the sample's tiles, then UMAP + leiden clusters drawn over the slide.

Until the representation-learning step provides a trained demo encoder, this uses the
registry's randomly initialised ``tiny_vit``: the clusters show the machinery working, not
biology, and the report says so.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from mmpath import _keys as K
from mmpath import io, pl, tl
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

DEMO_ENCODER = "tiny_vit"  # replaced by the trained demo encoder once it exists
SEED = 0

NOTE = (
    "<p class='note'>These embeddings come from <b>{name}</b>, a small model with "
    "<b>random, untrained weights</b>: they mean little. Clusters follow colour and texture "
    "statistics that a random network happens to pick up, not tissue types. The step shows "
    "the pipeline (streamed embedding, provenance, UMAP, leiden, cluster map); a trained "
    "encoder will replace it.</p>"
)


def run(ctx: DemoContext) -> list[Section]:
    import scanpy as sc
    import torch

    from mmpath import models

    tiles = ctx.state["tiles"]
    slide = ctx.state["slide"]
    torch.manual_seed(SEED)  # the tiny encoder is random: fix it so the demo is reproducible
    encoder = models.create_encoder(DEMO_ENCODER)
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
        "encoder": f"{encoder.info.name} (untrained, random weights)",
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
        title=f"leiden clusters of {key} (untrained encoder)",
    )
    fig_umap = pl.embedding(tiles, basis="umap", color="leiden")
    body = (
        NOTE.format(name=encoder.info.name)
        + table_html(stats)
        + figure_html(fig_map, "leiden clusters over the thumbnail")
        + figure_html(fig_umap, "UMAP of the tile embeddings")
    )
    return [Section("Embedding, UMAP and clusters", body)]
