"""``mmpath expr fit`` and ``mmpath expr predict``: image-to-RNA from the command line.

``fit`` reads spatial transcriptomics (Visium folders or .h5ad) with their H&E slides, cuts
spot-centred tiles, embeds them, cross-validates by slide (per-gene Pearson r against a
mean-expression baseline), fits on everything and writes the model folder with its report.
``predict`` applies a model folder to a tile table (embedding it first when needed).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from mmpath._names import to_component
from mmpath.cli._common import (
    nonneg_int,
    parse_remap,
    recorded_caveat,
    remap_arg,
    slide_mpp_arg,
    summary,
)
from mmpath.errors import ConfigError

log = logging.getLogger(__name__)

MORPH_ENCODER = "morph"


def register(sub) -> None:
    p = sub.add_parser("expr", help="predict spatial gene expression from H&E (fit / predict)")
    verbs = p.add_subparsers(dest="expr_command", metavar="<fit|predict>", required=True)

    f = verbs.add_parser("fit", help="fit an image-to-expression model on spatial data")
    f.add_argument(
        "--st",
        action="append",
        required=True,
        help="Space Ranger folder or .h5ad (repeat, paired with --slide, per sample)",
    )
    f.add_argument(
        "--slide",
        action="append",
        required=True,
        help="the full-resolution H&E of each --st, in the same order",
    )
    f.add_argument(
        "--encoder",
        required=True,
        help=f"encoder registry name, or {MORPH_ENCODER!r} for colour/texture features",
    )
    f.add_argument("--weights", default=None, help="weights file or folder for the encoder")
    f.add_argument(
        "--genes",
        default="hvg:50",
        help="hvg:N, top:K, GENE1,GENE2, file:panel.txt or all (hvg:50)",
    )
    f.add_argument("--method", default="ridge", choices=["ridge", "mlp", "contrastive"])
    f.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method hyper-parameter, e.g. n_components=128 (repeatable)",
    )
    f.add_argument(
        "--genomic",
        default=None,
        help="CSV of per-sample genomic vectors (index = slide id), from separate data",
    )
    f.add_argument("--fusion", default=None, choices=["concat", "gated"])
    f.add_argument("--diameter-um", type=float, default=55.0, help="spot diameter in µm (55)")
    f.add_argument(
        "--mpp", type=float, default=None, help="µm/px of the tiles (default: the encoder's)"
    )
    f.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: skip)")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--num-workers", type=nonneg_int, default=0)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("-o", "--out", required=True, help="model folder to write")
    slide_mpp_arg(f)
    f.set_defaults(func=cmd_fit)

    q = verbs.add_parser("predict", help="predict expression for a tile table")
    q.add_argument("table", help="tile table (.h5ad) from `mmpath tile`")
    q.add_argument("--model", required=True, help="model folder from `mmpath expr fit`")
    q.add_argument("--genomic", default=None, help="CSV of per-sample genomic vectors")
    q.add_argument(
        "--heatmap",
        action="append",
        default=[],
        metavar="GENE",
        help="also draw GENE over the slide thumbnail (repeatable)",
    )
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--num-workers", type=nonneg_int, default=0)
    q.add_argument("-o", "--out", required=True, help="output .h5ad (tiles x genes)")
    remap_arg(q)
    q.set_defaults(func=cmd_predict)


def parse_params(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--param {item!r}: the value is not valid YAML; quote it") from None
    return out


def _read_genomic(path: str | None):
    if path is None:
        return None
    import pandas as pd

    if not Path(path).is_file():
        raise ConfigError(f"--genomic file {path!r} does not exist")
    return pd.read_csv(path, index_col=0)


def _embed(spots, slide, args, encoder_name: str) -> str:
    """Embed spot tiles; returns the obsm key."""
    from mmpath import tl

    if encoder_name == MORPH_ENCODER:
        tl.morphology_features(spots, slide)
        return tl.expression.MORPH_KEY
    tl.embed(
        spots,
        encoder_name,
        slide=slide,
        weights=getattr(args, "weights", None),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    from mmpath import _keys as K
    from mmpath.io import _prov

    recs = _prov.plain(_prov.root(spots).get(K.UNS_EMBEDDINGS, {}))
    key = next(k for k in reversed(list(recs)) if not k.endswith(K.PROJ_SUFFIX))
    recorded_caveat(spots, key)
    return key


def _tile_mpp(args) -> float | None:
    if args.mpp is not None or args.encoder == MORPH_ENCODER:
        return args.mpp
    from mmpath.models import create_encoder

    return create_encoder(args.encoder, device="meta", pretrained=False).info.data.mpp


def _distinct_slide_ids(paths: list[str]) -> list[str | None]:
    """``None`` (the file stem) unless stems repeat, as every Space Ranger sample's ``he.tif``
    would: then ``<parent folder>_<stem>``, or ``<stem>_<n>`` when that repeats too."""
    stems = [Path(p).name.split(".")[0] for p in paths]
    if len(set(stems)) == len(stems):
        return [None] * len(paths)
    ids = [f"{Path(p).absolute().parent.name}_{s}" for p, s in zip(paths, stems, strict=True)]
    if len(set(ids)) < len(ids):
        ids = [f"{s}_{i}" for i, s in enumerate(stems, 1)]
    log.info("slides share a file name: slide ids %s", ", ".join(ids))
    return ids


def cmd_fit(args) -> int:
    from mmpath import io, pp, tl

    if len(args.st) != len(args.slide):
        raise ConfigError(f"{len(args.st)} --st but {len(args.slide)} --slide: pair them")
    for flag, value in (("--mpp", args.mpp), ("--slide-mpp", args.slide_mpp)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be a positive number of µm/px, got {value}")
    from mmpath.tl.expression._model import check_save_target, resolve_params

    check_save_target(args.out)  # before minutes of embedding and cross-validation
    params = parse_params(args.param)
    resolve_params(args.method, args.fusion, params)  # unknown or bad --param: fail now
    genomic = _read_genomic(args.genomic)  # a missing file fails before the embedding
    mpp = _tile_mpp(args)
    tables, key = [], None
    ids = _distinct_slide_ids(args.slide)
    for st_path, slide_path, sid in zip(args.st, args.slide, ids, strict=True):
        st = io.read_visium(st_path)
        with io.open_slide(slide_path, mpp=args.slide_mpp, slide_id=sid) as slide:
            spots = pp.spot_tiles(st, slide, diameter_um=args.diameter_um, mpp=mpp)
            key = _embed(spots, slide, args, args.encoder)
        tables.append(spots)
        log.info("%s: %d spots", slide_path, spots.n_obs)
    spots = io.concat(tables) if len(tables) > 1 else tables[0]
    kw = {
        "method": args.method,
        "use_rep": key,
        "genomic": genomic,
        "fusion": args.fusion,
        "params": params,
        "seed": args.seed,
    }
    scores = None
    if args.folds >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            scores = tl.evaluate_expression(spots, args.genes, n_splits=args.folds, **kw)
    model = tl.fit_expression(spots, args.genes, **kw)
    out = model.save(args.out, report=scores)
    io.write_h5ad(spots, out / "spots.h5ad")
    if scores is not None:
        s = tl.summarize_expression(scores).set_index("model")["pearson_mean"]
        name = args.method if args.fusion is None else f"{args.method}+{args.fusion}"
        summary(
            args,
            f"fitted {name} on {spots.n_obs} spots, {len(model.genes)} genes: mean "
            f"Pearson r {s[name]:.3f} (mean baseline {s['mean']:.3f}) -> {out}",
        )
    else:
        summary(
            args, f"fitted {args.method} on {spots.n_obs} spots, {len(model.genes)} genes -> {out}"
        )
    return 0


def cmd_predict(args) -> int:
    from mmpath import io, pl, tl
    from mmpath.tl.expression import ExpressionModel

    model = ExpressionModel.load(args.model)
    unknown = [g for g in args.heatmap if g not in set(model.genes)]
    if unknown:  # before the (long) embedding, not after it
        shown = ", ".join(model.genes[:10]) + (" ..." if len(model.genes) > 10 else "")
        raise ConfigError(
            f"--heatmap {unknown[0]!r} is not a gene the model predicts; pick one of: {shown}"
        )
    remap = parse_remap(args.remap)
    tiles = io.read_h5ad(args.table)
    if model.use_rep not in tiles.obsm:
        log.info("embedding %d tiles (%s)", tiles.n_obs, model.encoder)
        if model.encoder == "morphology":
            tl.morphology_features(tiles, key_added=model.use_rep, remap=remap)
        elif model.encoder:
            tl.embed(
                tiles,
                model.encoder,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                key_added=model.use_rep,
                remap=remap,
            )
    recorded_caveat(tiles, model.use_rep)
    pred = tl.predict_expression(tiles, model, genomic=_read_genomic(args.genomic))
    out = io.write_h5ad(pred, args.out)
    slide = io.open_slide_from(pred, remap=remap) if remap and args.heatmap else None
    for gene in args.heatmap:
        png = Path(out).with_name(to_component(f"{Path(out).stem}_{gene}.png"))
        pl.tiles(pred, slide, color=gene, save=png, title=f"predicted {gene}")
    summary(args, f"predicted {pred.n_vars} genes for {pred.n_obs} tiles -> {out}")
    return 0
