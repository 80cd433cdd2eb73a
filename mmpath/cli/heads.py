"""``mmpath segment`` and ``mmpath anomaly``: the heads trained by ``mmpath train seg|anomaly``.

``segment`` takes slides (a whole-slide mask each: PNG/TIFF + QuPath GeoJSON, and one
``areas.csv`` for the run) or tile tables (per-tile class fractions written into the table).
``anomaly`` scores the tiles of tile tables with a VAE (``anomaly_score``, error maps and a
heatmap over each slide), or with the kNN baseline on embeddings (``--use-rep``), and
evaluates AUROC/AUPRC when ``--label`` names a column of known anomalies.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmpath._names import check_name
from mmpath.cli._common import (
    device_arg,
    input_error,
    parse_remap,
    progress,
    remap_arg,
    slide_mpp_arg,
    summary,
)
from mmpath.errors import DataError, MmpathError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("segment", help="whole-slide segmentation with a trained U-Net head")
    p.add_argument("inputs", nargs="+", help="slides, or tile tables (.h5ad)")
    p.add_argument("--model", required=True, help="model folder from `mmpath train seg`")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--mpp", type=float, default=None, help="µm/px to run at (default: model's)")
    p.add_argument("--mask-mpp", type=float, default=None, help="µm/px of the written masks")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in px (tile/4)")
    p.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass (16)")
    p.add_argument(
        "--formats", default="png,geojson", help="comma-separated: png, tiff, geojson (png,geojson)"
    )
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu)")
    slide_mpp_arg(p)
    remap_arg(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("anomaly", help="score tiles with a VAE (or kNN on embeddings)")
    p.add_argument("tables", nargs="+", help="tile tables (.h5ad)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="model folder from `mmpath train anomaly`")
    g.add_argument("--use-rep", help="kNN baseline on this embedding (e.g. X_uni) instead")
    g.add_argument(
        "--patchcore",
        metavar="ENCODER",
        help="PatchCore on this encoder's patch features (e.g. mmpath-demo-vit) instead",
    )
    p.add_argument("--normal", default=None, help="kNN/PatchCore: obs column marking normal tiles")
    p.add_argument("--label", default=None, help="obs column of known anomalies: evaluate")
    p.add_argument(
        "-o", "--out", default=None, help="output directory (default: update tables in place)"
    )
    p.add_argument("--no-heatmap", action="store_true", help="skip the heatmap PNGs")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu)")
    remap_arg(p)
    p.set_defaults(func=cmd_anomaly)


def _formats(text: str) -> tuple[str, ...]:
    from mmpath.tl.segment import MASK_FORMATS

    alias = {"tif": "tiff"}
    out = tuple(
        alias.get(f.strip().lower(), f.strip().lower()) for f in text.split(",") if f.strip()
    )
    bad = sorted(set(out) - set(MASK_FORMATS))
    if bad:
        raise DataError(f"--formats: unknown {bad}; choose from {', '.join(MASK_FORMATS)}")
    return out


def cmd_segment(args) -> int:
    import pandas as pd

    from mmpath import io, tl
    from mmpath.tl.segment import load_head

    head = load_head(args.model, "seg")
    formats = _formats(args.formats)
    remap = parse_remap(args.remap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    for path in progress(args.inputs, args, desc="segment", unit="input"):
        try:
            if str(path).endswith(".h5ad"):
                table = io.read_h5ad(path)
                tl.segment(
                    table,
                    head,
                    mpp=args.mpp,
                    mask_mpp=args.mask_mpp,
                    overlap=args.overlap,
                    batch_size=args.batch_size,
                    device=args.device,
                    out_dir=out,
                    formats=formats,
                    remap=remap,
                )
                io.write_h5ad(table, out / Path(path).name)
                slides = tl.area_table(table)
                rows += [{"slide_id": sid, **r} for sid, r in slides.obs.iterrows()]
                continue
            with io.open_slide(path, mpp=args.slide_mpp) as slide:
                res = tl.segment_slide(
                    slide,
                    head,
                    mpp=args.mpp,
                    mask_mpp=args.mask_mpp,
                    overlap=args.overlap,
                    batch_size=args.batch_size,
                    device=args.device,
                )
                res.save(out, formats=formats)
                row = {"slide_id": slide.slide_id}
                for name, st in res.area_stats().items():
                    row[f"{name}_fraction"] = st["fraction"]
                    if "area_mm2" in st:
                        row[f"{name}_area_mm2"] = st["area_mm2"]
                rows.append(row)
        except MmpathError as err:
            input_error(f"{path}: {err}")
            failures.append(path)
    if rows:
        from mmpath.io._atomic import atomic_write_text

        atomic_write_text(out / "areas.csv", pd.DataFrame(rows).to_csv(index=False))
    n_ok = len(args.inputs) - len(failures)
    summary(
        args,
        f"segmented {n_ok}/{len(args.inputs)} input(s) with {head.name or args.model}"
        f" -> {out}" + (f"; {len(failures)} failed" if failures else ""),
    )
    return 2 if failures else 0


def cmd_anomaly(args) -> int:
    from mmpath import io, metrics, pl, tl
    from mmpath.io import _prov
    from mmpath.metrics import binary_labels

    head = None
    if args.model:
        from mmpath.tl.segment import load_head

        head = load_head(args.model, "anomaly")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    remap = parse_remap(args.remap)
    key = "anomaly" if head is not None else "anomaly_knn"
    if args.patchcore:
        key = "anomaly_patchcore"
    results = {}
    for path in progress(args.tables, args, desc="anomaly", unit="table"):
        p = Path(path)
        folder = out if out is not None else p.parent
        table = io.read_h5ad(p)
        if args.label:  # check the labels before the (long) scoring, not after it
            if args.label not in table.obs:
                raise DataError(f"{p.name}: obs has no column {args.label!r} (--label)")
            try:
                binary_labels(table.obs[args.label])
            except DataError as err:
                raise DataError(f"{p.name}: --label {args.label!r}: {err}") from None
        if head is not None:
            tl.anomaly(
                table,
                head,
                device=args.device,
                error_maps=folder / f"{p.stem}.error_maps.npz",
                remap=remap,
            )
        elif args.patchcore:
            tl.anomaly_patchcore(
                table, args.patchcore, normal=args.normal, device=args.device, remap=remap
            )
        else:
            tl.anomaly_knn(table, use_rep=args.use_rep, normal=args.normal)
        score = f"{key}_score"
        if args.label:
            results[p.name] = metrics.anomaly_metrics(table.obs[score], table.obs[args.label])
        io.write_h5ad(table, folder / p.name)
        if not args.no_heatmap:
            for sid in _prov.slide_ids(table):
                try:
                    slide = io.open_slide_from(table, sid, remap=remap) if remap else None
                    pl.tiles(
                        table,
                        slide,
                        color=score,
                        slide_id=sid,
                        cmap="magma",
                        title=f"{sid}: {score}",
                        save=folder / f"{check_name(sid, what='slide id')}.{key}.png",
                    )
                except MmpathError as err:  # in-memory slides have no file to draw
                    log.warning("no heatmap for %s: %s", sid, err)
    if results:
        from mmpath.io._atomic import atomic_write_text

        target = (out or Path(args.tables[0]).parent) / f"{key}_metrics.json"
        atomic_write_text(target, json.dumps(results, indent=2))
        shown = "; ".join(
            f"{k}: AUROC {v['auroc']:.3f}, AUPRC {v['auprc']:.3f}" for k, v in results.items()
        )
        summary(args, f"scored {len(args.tables)} table(s) ({key}); {shown}")
    else:
        summary(
            args,
            f"scored {len(args.tables)} table(s) ({key}) -> {out or 'tables updated in place'}",
        )
    return 0
