"""``mmpath predict-slides``: slide calls of a MIL head trained by ``mmpath train mil``.

Reads the tile tables one at a time (memory stays flat in the number of slides), writes each
slide's attention back into its table (``obs["mil_attention"]``, atomically), and writes one
slide table for the run (``-o slides.h5ad`` plus a ``.csv`` beside it). ``--heatmaps DIR``
draws the attention over each slide's thumbnail (``mm.pl.tiles``; on the tile positions when
the slide file cannot be reopened) and a gallery of the most attended tiles.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmpath.cli._common import progress, summary, warn
from mmpath.errors import MmpathError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "predict-slides", help="slide-level predictions + attention of a trained MIL head"
    )
    p.add_argument(
        "tables", nargs="+", help="tile tables (.h5ad) embedded with the model's encoder"
    )
    p.add_argument(
        "--model", required=True, help="run folder of `mmpath train mil` (or its model/)"
    )
    p.add_argument("-o", "--out", required=True, help="slide table to write (.h5ad; a .csv beside)")
    p.add_argument("--heatmaps", default=None, help="folder for attention heatmaps and galleries")
    p.add_argument("--top", type=int, default=8, help="most attended tiles per gallery (8)")
    p.add_argument("--key-added", default="mil", help="prefix of the output columns (mil)")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: auto)")
    p.set_defaults(func=cmd_predict_slides)
    register_embed(sub)


def cmd_predict_slides(args) -> int:
    import anndata as ad

    from mmpath import _keys as K
    from mmpath import io, tl
    from mmpath.io.bags import expand_tables
    from mmpath.io.table import write_h5ad
    from mmpath.models.heads import load_trained_head

    head = load_trained_head(args.model, kind="mil", device=args.device or "cpu")
    paths = expand_tables(args.tables)
    parts = []
    for path in progress(paths, args, desc="predict-slides", unit="table"):
        table = io.read_h5ad(path)
        slides = tl.predict_slides(table, head, key_added=args.key_added)
        write_h5ad(table, path)  # attention written back (atomic)
        parts.append(slides)
        if args.heatmaps:
            _pictures(table, slides, Path(args.heatmaps), args)
    merged = ad.concat(parts, merge="first")
    if merged.obs_names.duplicated().any():
        dup = merged.obs_names[merged.obs_names.duplicated()].tolist()[:5]
        raise MmpathError(f"slides {dup} are in more than one table; pass each slide once")
    uns = dict(parts[0].uns[K.UNS])
    uns[K.UNS_SLIDES] = {k: v for p in parts for k, v in p.uns[K.UNS][K.UNS_SLIDES].items()}
    merged.uns[K.UNS] = uns
    out = Path(args.out)
    write_h5ad(merged, out)
    from mmpath.io._atomic import atomic_path

    with atomic_path(out.with_suffix(".csv")) as tmp:
        merged.obs.to_csv(tmp)
    summary(args, f"predicted {merged.n_obs} slides from {len(paths)} tables; slide table {out}")
    return 0


def _pictures(table, slides, folder: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from mmpath import _keys as K
    from mmpath import pl
    from mmpath._names import to_component

    col = f"{args.key_added}_attention"
    if col not in table.obs:
        warn(
            f"the {slides.uns[K.UNS][K.UNS_MIL][args.key_added]['head']} head has no attention; "
            "no heatmaps"
        )
        return
    for sid in slides.obs_names:
        sub = table[table.obs[K.SLIDE_ID].astype(str) == sid]
        name = to_component(str(sid))
        try:
            fig = pl.tiles(
                sub, None, color=col, slide_id=sid, save=folder / f"{name}.attention.png"
            )
        except MmpathError as err:
            warn(f"slide {sid!r} cannot be reopened ({err}); heatmap drawn on tile positions only")
            fig = pl.embedding(
                sub,
                basis=K.SPATIAL,
                color=col,
                title=f"{sid}: {col}",
                save=folder / f"{name}.attention.png",
            )
            plt.close(fig)
            continue
        plt.close(fig)
        top = sub.obs.nlargest(args.top, col)
        hits = top.assign(obs_name=top.index, rank=range(1, len(top) + 1), score=top[col])
        try:
            fig = pl.gallery(
                hits,
                sub,
                title=f"{sid}: most attended tiles",
                save=folder / f"{name}.top_tiles.png",
            )
            plt.close(fig)
        except MmpathError as err:
            warn(f"slide {sid!r}: no gallery of top tiles ({err})")


def register_embed(sub) -> None:
    p = sub.add_parser("embed-slides", help="slide embeddings from a pretrained slide encoder")
    p.add_argument(
        "tables", nargs="+", help="tile tables (.h5ad) with the encoder's patch features"
    )
    p.add_argument("--encoder", required=True, help="titan, prism, gigapath-slide or feather")
    p.add_argument("--use-rep", required=True, help="obsm key of the patch features")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the encoder's Hugging Face repository (off by default)",
    )
    p.add_argument("-o", "--out", required=True, help="slide table to write (.h5ad)")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: auto)")
    p.add_argument(
        "--weights", default=None, help="weights file/folder (feather; default: the HF cache)"
    )
    p.set_defaults(func=cmd_embed_slides)


def cmd_embed_slides(args) -> int:
    import anndata as ad

    from mmpath import io, tl
    from mmpath.io.bags import expand_tables
    from mmpath.io.table import write_h5ad

    parts = []
    for path in progress(expand_tables(args.tables), args, desc="embed-slides", unit="table"):
        table = io.read_h5ad(path)
        parts.append(
            tl.embed_slides(
                table,
                args.encoder,
                use_rep=args.use_rep,
                trust_remote_code=args.trust_remote_code,
                device=args.device,
                weights=args.weights,
            )
        )
    merged = ad.concat(parts, merge="first")
    merged.uns = parts[0].uns
    write_h5ad(merged, args.out)
    summary(args, f"embedded {merged.n_obs} slides with {args.encoder}; slide table {args.out}")
    return 0
