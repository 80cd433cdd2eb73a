"""Demo step: index the sample's tile embeddings, search with a tile, show the gallery.

Reads ``ctx.state["tiles"]`` as the embedding step left it and indexes its embedding
(``ctx.state["embedding_key"]``, else the first ``obsm`` key starting with ``X_``). Without
an embedding it reports that search needs one.
"""

from __future__ import annotations

import html

import numpy as np

from mmpath import _keys as K
from mmpath import index, pl
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

TITLE = "Tile search (FAISS index)"
K_HITS = 8


def _embedding_key(ctx: DemoContext, tiles) -> str | None:
    key = ctx.state.get("embedding_key")
    if key in tiles.obsm:
        return key
    return next((k for k in tiles.obsm if str(k).startswith(K.REP_PREFIX)), None)


def run(ctx: DemoContext) -> list[Section]:
    tiles = ctx.state.get("tiles")
    key = None if tiles is None else _embedding_key(ctx, tiles)
    if tiles is None or key is None or tiles.n_obs < 2:
        return [
            Section(
                TITLE,
                "<p class='note'>Search needs tile embeddings "
                "(<code>obsm['X_&lt;encoder&gt;']</code>); the embedding step "
                "provides them.</p>",
            )
        ]
    idx = index.build(tiles, use_rep=key)
    path = idx.save(ctx.out / "tiles.idx")
    k = min(K_HITS, len(idx) - 1)
    # the query: the tile with the most tissue (a typical, well-covered tile)
    q = int(np.argmax(tiles.obs[K.TISSUE_FRAC].to_numpy())) if K.TISSUE_FRAC in tiles.obs else 0
    query = tiles[q : q + 1]
    hits = idx.search_image(query, k=k, drop_neighbours=0)  # 0: leave the query tile out
    fig = pl.gallery(
        hits, idx, query=query, title=f"nearest tiles of {query.obs_names[0]} by cosine on {key}"
    )

    # approximate vs exact on this table, to show the evaluation helper at work
    recall = None
    if tiles.n_obs >= 64:
        nlist = max(4, int(np.sqrt(tiles.n_obs)) // 2)
        approx = index.build(tiles, use_rep=key, factory=f"IVF{nlist},Flat", params={"nprobe": 2})
        x = tiles.obsm[key][: min(200, tiles.n_obs)]
        kk = min(10, len(idx))
        recall = index.recall_at_k(approx.search_vectors(x, kk)[1], idx.search_vectors(x, kk)[1])
    stats = {
        "indexed": f"{len(idx)} tiles of {len(idx.slide_ids)} slide(s), {key} ({idx.dim}-d)",
        "encoder": idx.encoder,
        "factory (chosen by size)": idx.factory,
        "saved to": f"{path.name}/ (index.faiss, metadata.parquet, manifest.json)",
        "query tile": f"{query.obs_names[0]} at ({int(query.obs[K.X].iloc[0])}, "
        f"{int(query.obs[K.Y].iloc[0])})",
    }
    if recall is not None:
        stats[f"10-recall@10 of IVF{nlist},Flat (nprobe=2) vs exact"] = round(recall, 3)
    cols = ["rank", "score", "slide_id", "x", "y", "obs_name"]
    rows = hits[cols].to_dict("records")
    body = (
        "<p>Cosine similarity on the tiles' embeddings (normalised inner product). With the "
        "demo encoder (a small SSL-pretrained demo model, not a foundation model), neighbours "
        "share colour, stain density and texture, not diagnosis. Not diagnostic.</p>"
        + table_html(stats)
        + figure_html(fig, "query tile and its nearest tiles")
        + table_html(rows)
        + f"<p class='muted'>CLI: <code>mmpath search {html.escape(path.name)} --tiles "
        "tiles.h5ad --rows 0:1 -k 8</code></p>"
        + "<p class='muted'>Search by text or image in a web page, with a slide viewer that "
        "zooms to each hit: <code>make serve</code> (or <code>mmpath serve "
        "demo-out/serve.idx --demo</code>, which indexes the demo image-text model's joint "
        "space), then open http://127.0.0.1:8000/.</p>"
    )
    ctx.state["index"] = idx
    return [Section(TITLE, body)]
