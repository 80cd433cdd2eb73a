"""``mmpath archive run`` and ``mmpath archive status``: many slides, resumably, on an engine."""

from __future__ import annotations

import logging

from mmpath.cli._common import caveat, input_error, summary

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("archive", help="tile + embed whole slide archives (local, Ray or Dask)")
    verbs = p.add_subparsers(dest="archive_command", metavar="<run|status>", required=True)

    r = verbs.add_parser(
        "run",
        help="process every slide of a folder/glob/CSV into an archive folder (resumable)",
        description="Process slides into an archive folder: one tile table per slide plus a "
        "manifest. A rerun skips done slides whose file and config are unchanged, redoes "
        "new, changed and unfinished ones, and embeds only encoders a slide lacks.",
    )
    r.add_argument("slides", nargs="+", help="a folder (recursive), a glob, a CSV with 'path'")
    r.add_argument("-o", "--out", required=True, help="archive folder")
    r.add_argument("--config", default=None, help="YAML config (configs/archive.yaml)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. engine.batch_size=128 (repeatable)",
    )
    r.add_argument(
        "--encoder",
        action="append",
        default=None,
        help="encoder name (repeatable); replaces the config's encoders",
    )
    r.add_argument("--weights", default=None, help="weights of the (single) encoder")
    r.add_argument("--mpp", type=float, default=None, help="target µm/px of the tiles")
    r.add_argument("--size", type=int, default=None, help="tile side in pixels")
    r.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 µm/px of every slide (a CSV 'mpp' column wins)",
    )
    r.add_argument(
        "--engine",
        choices=["local", "ray", "dask"],
        default=None,
        help="where jobs run (default local)",
    )
    r.add_argument("--address", default=None, help="Ray or Dask cluster address (HOST:PORT)")
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        help="model processes (default: one per GPU, else cpus/2; 0 = in-process)",
    )
    r.add_argument(
        "--retry-failed",
        action="store_true",
        default=None,
        help="also redo slides that failed before",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="accept a tiling other than the archive's and redo every slide with it",
    )
    r.add_argument(
        "--stage-dir",
        default=None,
        help="copy slides to this local folder ahead of the workers (slow storage)",
    )
    r.set_defaults(func=cmd_run)

    s = verbs.add_parser("status", help="per-slide state of an archive; writes summary.md")
    s.add_argument("folder", help="archive folder")
    s.add_argument("--max-rows", type=int, default=100, help="rows to print (100)")
    s.set_defaults(func=cmd_status)


def _say_caveats(out) -> None:
    """The demo/random-weight caveat of each encoder, as recorded in one finished table (one
    line each, like every verb that runs an encoder)."""
    from mmpath import _keys as K
    from mmpath.archive import open as open_archive
    from mmpath.index._source import read_light
    from mmpath.io import _prov

    paths = open_archive(out).table_paths()
    if paths:
        recs = _prov.plain(read_light(paths[0]).uns[K.UNS].get(K.UNS_EMBEDDINGS, {}))
        for rec in recs.values():
            caveat(rec.get("caveat"))


def cmd_run(args) -> int:
    from mmpath.archive import run
    from mmpath.archive.config import load_archive_config
    from mmpath.archive.report import summary_line
    from mmpath.archive.run import status, status_summary

    cfg = load_archive_config(args.config, args.set) if (args.config or args.set) else None
    slides = args.slides if len(args.slides) > 1 else args.slides[0]
    table = run(
        slides,
        args.out,
        config=cfg,
        encoder=args.encoder,
        weights=args.weights,
        mpp=args.mpp,
        size=args.size,
        slide_mpp=args.slide_mpp,
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        stage_dir=args.stage_dir,
        progress=not args.quiet,
    )
    _say_caveats(args.out)
    bad = table[~table.state.isin(["done"])]
    for r in bad.itertuples():
        input_error(f"{r.slide_id}: {r.state}: {r.error}")
    ran = int((table.action == "ran").sum())
    counts = table.state.value_counts().to_dict()
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    summary(
        args,
        f"archive {args.out}: {len(table)} slide(s) in this run: {text} ({ran} processed, "
        f"{len(table) - ran} already done or kept); archive: "
        + summary_line(status_summary(status(args.out))),
    )
    if len(bad):
        summary(args, f"{len(bad)} slide(s) not done; see `mmpath archive status {args.out}`")
    return 2 if len(bad) else 0


def cmd_status(args) -> int:
    import pandas as pd

    from mmpath.archive.report import summary_line
    from mmpath.archive.run import status, status_summary, write_summary

    df = status(args.folder)
    shown = df[["slide_id", "state", "n_tiles", "seconds", "encoders", "error"]]
    if len(shown) > args.max_rows:  # failures first, then the rest up to the limit
        order = shown.state.map({"failed": 0, "interrupted": 1}).fillna(2)
        shown = shown.assign(_o=order).sort_values("_o", kind="stable").drop(columns="_o")
        extra = len(shown) - args.max_rows
        shown = shown.head(args.max_rows)
    else:
        extra = 0
    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        print(shown.to_string(index=False) if len(shown) else "(no slides yet)")
    if extra:
        print(f"... {extra} more row(s): see {args.folder}/manifest.jsonl")
    path = write_summary(args.folder, df)
    summ = status_summary(df)
    summary(args, f"{summary_line(summ)}; summary: {path}")
    return 0
