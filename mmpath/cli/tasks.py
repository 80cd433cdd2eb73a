"""``mmpath zeroshot`` and ``mmpath probe``: tasks on embedded tile tables.

``zeroshot`` classifies the tiles of each table in place (written back atomically, or into
``-o``) and writes one slide table for the whole run (``<key_added>_slides.csv`` and
``.h5ad``; ``zs_`` by default). Empty tables (slides without tissue) are skipped with a warning.
``probe`` cross-validates a linear or kNN probe on one table (several are concatenated into a
cohort) and writes a report folder: ``metrics.csv``, ``confusion.csv``, ``report.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmpath._names import check_name
from mmpath.cli._common import (
    device_arg,
    encoder_caveat,
    input_error,
    plot_failed,
    plots_arg,
    progress,
    recorded_caveat,
    skip_table,
    summary,
    want_plots,
)
from mmpath.errors import ConfigError, DataError, MmpathError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classify tiles and slides from class names")
    p.add_argument("tables", nargs="+", help="tile tables (.h5ad)")
    p.add_argument("--encoder", required=True, help="image-text encoder (e.g. conch, plip)")
    p.add_argument(
        "--classes",
        required=True,
        help='class names separated by ";" (e.g. "tumor;stroma;necrosis")',
    )
    p.add_argument(
        "--templates",
        default=None,
        help="text file of prompt templates, one per line, '{}' for the class",
    )
    p.add_argument("--weights", default=None, help="weights file or folder for the encoder")
    p.add_argument(
        "--top-k", type=int, default=10, help="tiles per slide pooled into the slide call (10)"
    )
    p.add_argument("--key-added", default="zs", help="obs prefix of the results (zs)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda... (default: auto)")
    p.add_argument(
        "-o",
        "--out",
        default=None,
        help="write tables and the slide table here (default: update tables in place)",
    )
    plots_arg(p)
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("probe", help="cross-validated linear / kNN probe of a label")
    p.add_argument("tables", nargs="+", help="tile tables (.h5ad); several form one cohort")
    p.add_argument("--use-rep", required=True, help="obsm key of the features (e.g. X_uni)")
    p.add_argument("--label", required=True, help="obs column with the class of each tile")
    p.add_argument(
        "--method",
        choices=["logreg", "knn"],
        default="logreg",
        help="logistic regression (default) or k nearest neighbours",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    p.add_argument(
        "--groups",
        default="slide_id",
        help="obs column never split across folds (slide_id); 'none' splits rows",
    )
    p.add_argument("--k", type=int, default=20, help="neighbours of the kNN probe (20)")
    p.add_argument("--C", type=float, default=1.0, help="inverse regularisation of logreg (1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (0)")
    p.add_argument("-o", "--out", default=None, help="report folder (default: print only)")
    plots_arg(p)
    p.set_defaults(func=cmd_probe)


def parse_classes(text: str) -> list[str]:
    """``"a; b;c"`` -> ``["a", "b", "c"]``."""
    names = [c.strip() for c in text.split(";") if c.strip()]
    if not names:
        raise ConfigError('--classes is empty; give names separated by ";" (e.g. "tumor;stroma")')
    return names


def read_templates(path: str) -> list[str]:
    """Prompt templates from a text file: one per line; blank lines and ``#`` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"templates file {path!r} does not exist")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    if not out:
        raise ConfigError(f"templates file {path!r} holds no templates (one per line, with '{{}}')")
    return out


def cmd_zeroshot(args) -> int:
    import pandas as pd

    from mmpath import io, tl
    from mmpath.io._atomic import atomic_write_text
    from mmpath.tl.embed import resolve_encoder

    check_name(args.key_added, what="--key-added")
    classes = parse_classes(args.classes)
    templates = read_templates(args.templates) if args.templates else None
    encoder = resolve_encoder(args.encoder, weights=args.weights, device=args.device)
    encoder_caveat(encoder)
    out = Path(args.out) if args.out else None
    plots = want_plots(args, out is not None)
    n_png = 0
    slide_tables, failures, n_tiles = [], [], 0
    for path in progress(args.tables, args, desc="zero-shot", unit="table"):
        try:
            tiles = io.read_h5ad(path)
            if skip_table(tiles, path):  # a slide table or an empty table
                continue
            slides = tl.zero_shot(
                tiles,
                classes,
                encoder,
                templates=templates,
                key_added=args.key_added,
                top_k=args.top_k,
                device=args.device,
            )
            io.write_h5ad(tiles, out / Path(path).name if out else path)
            if plots:
                n_png += zeroshot_heatmaps(tiles, args.key_added, out or Path(path).parent, path)
        except MmpathError as err:
            input_error(f"{path}: {err}")
            failures.append(path)
            continue
        n_tiles += tiles.n_obs
        slide_tables.append(slides)
    if not slide_tables:
        raise DataError("no table could be classified; see the errors above")
    frames = []
    for t in slide_tables:
        df = t.to_df()
        df.insert(0, args.key_added, t.obs[args.key_added].astype(str))
        df.insert(1, "n_tiles", t.obs["n_tiles"])
        frames.append(df)
    table = pd.concat(frames)
    table.index.name = "slide_id"
    dest = out or Path(args.tables[0]).parent
    csv = dest / f"{args.key_added}_slides.csv"
    atomic_write_text(csv, table.to_csv(float_format="%.6g"))
    io.write_h5ad(
        slide_tables[0] if len(slide_tables) == 1 else io.concat(slide_tables),
        dest / f"{args.key_added}_slides.h5ad",
    )
    if not getattr(args, "quiet", False):
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    summary(
        args,
        f"zero-shot with {encoder.info.name}: {n_tiles} tiles, {len(table)} slide(s), "
        f"{len(classes)} classes -> {csv}"
        + (f", {n_png} heatmap PNG(s)" if n_png else "")
        + (f"; {len(failures)} table(s) failed" if failures else ""),
    )
    return 2 if failures else 0


def zeroshot_heatmaps(tiles, key: str, dest: Path, path) -> int:
    """Per slide of ``tiles``: the label map and one probability heatmap per class (PNGs in
    ``dest``, named after the table); returns how many were written."""
    from mmpath import _keys as K
    from mmpath import pl
    from mmpath._names import to_component

    run = tiles.uns[K.UNS][K.UNS_RUNS][key]
    sids = [str(s) for s in tiles.obs[K.SLIDE_ID].unique()]
    stem = Path(path).stem
    n = 0
    import matplotlib.pyplot as plt

    for sid in sids:
        base = stem if len(sids) == 1 else f"{stem}_{sid}"
        jobs = [(key, {}, "zero-shot label")] + [
            (col, {"vmin": 0.0, "vmax": 1.0, "cmap": "magma"}, f"P({name})")
            for name, col in zip(run["classes"], run["columns"], strict=True)
        ]
        for col, kw, what in jobs:
            png = dest / to_component(f"{base}_{col}.png")
            try:
                fig = pl.tiles(
                    tiles, None, color=col, slide_id=sid, title=f"{sid}: {what}", save=png, **kw
                )
                plt.close(fig)
                n += 1
            except MmpathError as err:
                plot_failed(f"{png.name}", err)
                break  # the slide cannot be read: the other maps would fail alike
    return n


def cmd_probe(args) -> int:
    from mmpath import io, tl
    from mmpath.io._atomic import atomic_write_text

    tables = [io.read_h5ad(p) for p in args.tables]
    adata = tables[0] if len(tables) == 1 else io.concat(tables)
    groups = None if args.groups.lower() == "none" else args.groups
    note = recorded_caveat(adata, args.use_rep)
    df = tl.linear_probe(
        adata,
        label=args.label,
        use_rep=args.use_rep,
        method=args.method,
        n_splits=args.folds,
        groups=groups,
        C=args.C,
        n_neighbors=args.k,
        seed=args.seed,
    )
    cm = df.attrs["confusion_matrix"]
    if not getattr(args, "quiet", False):
        print(df.to_string(float_format=lambda v: f"{v:.3f}"))
        print("\nconfusion matrix (rows: true, columns: predicted), summed over folds")
        print(cm.to_string())
    mean = df.loc["mean"]
    where = ""
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "metrics.csv", df.to_csv(float_format="%.6g"))
        atomic_write_text(out / "confusion.csv", cm.to_csv())
        report = {
            "params": df.attrs["params"],
            "cv": df.attrs["cv"],
            "classes": df.attrs["classes"],
            "mean": {
                k: float(mean[k]) for k in ("balanced_accuracy", "f1_weighted", "auroc_macro")
            },
            "folds": json.loads(df.drop(index=["mean", "std"]).to_json(orient="records")),
            "confusion_matrix": cm.to_numpy().tolist(),
            "tables": [str(p) for p in args.tables],
            **({"caveat": note} if note else {}),
        }
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
        where = f" -> {out}"
    if want_plots(args, bool(args.out)):
        import matplotlib.pyplot as plt

        from mmpath import pl

        if not args.out:
            raise ConfigError("--plots needs -o <folder> for the probe's PNGs")
        sub = f"{args.method} probe of {args.label!r} on {args.use_rep}"
        for fn, name in ((pl.confusion_matrix, "confusion.png"), (pl.roc, "roc.png")):
            plt.close(fn(df, title=f"{sub}\n{name[:-4]}", save=Path(args.out) / name))
        where += " (+ confusion.png, roc.png)"
    summary(
        args,
        f"{args.method} probe of {args.label!r} on {args.use_rep} "
        f"({args.folds} folds by {df.attrs['cv']}): balanced accuracy "
        f"{mean['balanced_accuracy']:.3f}, weighted F1 {mean['f1_weighted']:.3f}, "
        f"AUROC {mean['auroc_macro']:.3f}{where}",
    )
    return 0
