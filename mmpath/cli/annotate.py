"""``mmpath annotate``: labels without Python. Polygon annotations (QuPath GeoJSON, ASAP XML)
become a tile label column (:func:`mmpath.pp.annotate_tiles` over
:func:`mmpath.io.read_annotations`), and per-slide metadata (a CSV/TSV/parquet with one row
per slide) becomes obs columns (:func:`mmpath.io.join_metadata`). Each table is rewritten
atomically (or written into ``-o``).

``--geojson`` takes one file (for one table), a folder holding ``<slide_id>.geojson`` /
``.json`` / ``.xml``, or a path with ``{slide_id}`` in it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmpath._names import check_name
from mmpath.cli._common import input_error, progress, skip_table, summary, warn
from mmpath.errors import ConfigError, DataError, MmpathError

log = logging.getLogger(__name__)

SUFFIXES = (".geojson", ".json", ".xml")


def register(sub) -> None:
    p = sub.add_parser(
        "annotate", help="label tiles from polygon annotations and/or per-slide metadata"
    )
    p.add_argument("tables", nargs="+", help="tile tables (.h5ad)")
    p.add_argument(
        "--geojson",
        default=None,
        metavar="PATH",
        help="annotations: a file (one table), a folder of <slide_id>.geojson/.xml, or a path "
        "with {slide_id}",
    )
    p.add_argument(
        "--min-overlap",
        type=float,
        default=0.5,
        help="covered fraction a tile needs to take a label (0.5)",
    )
    p.add_argument(
        "--fractions", action="store_true", help="also write each label's covered fraction"
    )
    p.add_argument(
        "--key-added", default="annotation", help="obs column of the labels (annotation)"
    )
    p.add_argument("--metadata", default=None, help="per-slide table (.csv, .tsv, .parquet)")
    p.add_argument("--columns", default=None, help="metadata columns to join, comma-separated")
    p.add_argument("--on", default="slide_id", help="key column of the metadata (slide_id)")
    p.add_argument(
        "--missing",
        choices=["error", "warn"],
        default="error",
        help="a slide with no metadata row: error (default) or warn and leave it empty",
    )
    p.add_argument("-o", "--out", default=None, help="write the tables here (default: in place)")
    p.set_defaults(func=cmd_annotate)


def _annotation_file(spec: str, sid: str, n_tables: int) -> Path | None:
    if "{slide_id}" in spec:
        return Path(spec.replace("{slide_id}", sid))
    p = Path(spec)
    if p.is_dir():
        return next((p / f"{sid}{s}" for s in SUFFIXES if (p / f"{sid}{s}").is_file()), None)
    if n_tables > 1:
        raise ConfigError(
            f"--geojson {spec!r} is one file but {n_tables} tables were given; pass a folder "
            "of <slide_id>.geojson files or a path with {slide_id}"
        )
    return p


def cmd_annotate(args) -> int:
    from mmpath import _keys as K
    from mmpath import io, pp

    if args.geojson is None and args.metadata is None:
        raise ConfigError("nothing to do: pass --geojson and/or --metadata")
    check_name(args.key_added, what="--key-added")
    if not 0.0 < args.min_overlap <= 1.0:
        raise ConfigError(f"--min-overlap must be within (0, 1], got {args.min_overlap}")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.columns is not None and not columns:
        raise ConfigError("--columns is empty; name metadata columns, e.g. --columns diagnosis")
    if args.metadata is not None and not Path(args.metadata).is_file():
        raise ConfigError(f"--metadata {args.metadata!r} does not exist")
    out = Path(args.out) if args.out else None
    n_done, n_labelled, failures, unlabelled = 0, 0, [], []
    for path in progress(args.tables, args, desc="annotating", unit="table"):
        try:
            tiles = io.read_h5ad(path)
            if skip_table(tiles, path):
                continue
            if args.geojson is not None:
                for sid in [str(s) for s in tiles.obs[K.SLIDE_ID].unique()]:
                    f = _annotation_file(args.geojson, sid, len(args.tables))
                    if f is None or not f.exists():
                        unlabelled.append(sid)
                        continue
                    pp.annotate_tiles(
                        tiles,
                        io.read_annotations(f),
                        key_added=args.key_added,
                        min_overlap=args.min_overlap,
                        fractions=args.fractions,
                        slide_id=sid,
                    )
                    n_labelled += int(tiles.obs[args.key_added].notna().sum())
            if args.metadata is not None:
                io.join_metadata(
                    tiles, args.metadata, on=args.on, columns=columns, missing=args.missing
                )
            io.write_h5ad(tiles, out / Path(path).name if out else path)
            n_done += 1
        except MmpathError as err:
            input_error(f"{path}: {err}")
            failures.append(path)
    if unlabelled:
        warn(
            f"{len(unlabelled)} slide(s) had no annotation file under {args.geojson!r} "
            f"(first: {unlabelled[0]}); their tiles are unlabelled"
        )
    if not n_done and failures:
        raise DataError("no table could be annotated; see the errors above")
    what = []
    if args.geojson is not None:
        what.append(f"{n_labelled} tiles labelled in obs[{args.key_added!r}]")
    if args.metadata is not None:
        what.append(f"metadata joined on {args.on!r}")
    summary(
        args,
        f"annotated {n_done}/{len(args.tables)} table(s): {', '.join(what)}"
        + (f"; {len(failures)} failed" if failures else ""),
    )
    return 2 if failures else 0
