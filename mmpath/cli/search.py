"""``mmpath index build|add|remove|info`` and ``mmpath search``: argument plumbing over
:mod:`mmpath.index`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmpath.cli._common import (
    caveat,
    encoder_caveat,
    plot_failed,
    plots_arg,
    progress,
    skip_table,
    summary,
    want_plots,
)
from mmpath.errors import ConfigError, IndexError_, MmpathError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("index", help="build and maintain a search index over tile tables")
    isub = p.add_subparsers(dest="index_command", metavar="<build|add|remove|info>")
    isub.required = True

    b = isub.add_parser("build", help="index the tiles of embedded tile tables")
    b.add_argument("tables", nargs="+", help="embedded tile tables (.h5ad) or archive folders")
    b.add_argument(
        "--use-rep",
        required=True,
        help="obsm key to index (X_<slug>; X_<slug>_proj for text search)",
    )
    b.add_argument("-o", "--out", required=True, help="index directory to write")
    b.add_argument("--factory", default=None, help="faiss factory string (default: chosen by size)")
    b.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="query-time default: nprobe=32, efSearch=128, k_factor=8 (repeatable)",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes adding blocks of tables in parallel (IVF indexes, merged on disk)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing index")
    b.add_argument("--center", action="store_true", help="centre vectors on their build-time mean")
    b.add_argument("--whiten", action="store_true", help="centre and whiten (implies --center)")
    b.set_defaults(func=cmd_build)

    a = isub.add_parser("add", help="add tile tables to an index")
    a.add_argument("index", help="index directory")
    a.add_argument("tables", nargs="+", help="embedded tile tables (.h5ad) or archive folders")
    a.set_defaults(func=cmd_add)

    r = isub.add_parser("remove", help="remove slides from an index")
    r.add_argument("index", help="index directory")
    r.add_argument("slides", nargs="*", help="slide ids")
    r.add_argument(
        "--compact",
        action="store_true",
        help="rewrite on-disk segments without removed tiles (else they are skipped as "
        "tombstones); alone, compacts earlier removals",
    )
    r.set_defaults(func=cmd_remove)

    i = isub.add_parser("info", help="print an index's manifest")
    i.add_argument("index", help="index directory")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("search", help="search an index by image, text or tiles")
    s.add_argument("index", help="index directory")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", help="query image file(s)")
    q.add_argument("--text", nargs="+", help="query text(s)")
    q.add_argument("--tiles", help="a tile table (.h5ad) whose rows are the queries")
    s.add_argument(
        "--rows",
        default=None,
        help="with --tiles: rows to use, as START:STOP or comma-separated names",
    )
    s.add_argument("-k", type=int, default=10, help="hits per query (slides with --slide-level)")
    s.add_argument(
        "--slide-level",
        action="store_true",
        help="rank slides by majority vote of tile hits (the queries form one slide)",
    )
    s.add_argument("--where", default=None, help="metadata filter, e.g. \"organ == 'colon'\"")
    s.add_argument("--encoder", default=None, help="encoder for images/text (default: index's)")
    s.add_argument("--weights", default=None, help="weights for --encoder")
    s.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="µm/px of --image queries (default: the index's tiling mpp, said in one line)",
    )
    s.add_argument(
        "--drop-neighbours",
        type=float,
        default=None,
        metavar="PX",
        help="drop hits within PX (level 0) of a --tiles query on its slide",
    )
    s.add_argument(
        "--min-distance",
        type=float,
        default=None,
        metavar="PX",
        help="drop hits within PX of a better hit on the same slide",
    )
    s.add_argument(
        "--mosaic",
        type=int,
        default=None,
        help="with --slide-level: summarise the query by this many tiles",
    )
    s.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="query-time parameter for this search (nprobe, efSearch, k_factor)",
    )
    s.add_argument(
        "-o",
        "--out",
        default=None,
        help="hits to .csv/.tsv/.parquet, a gallery to .png/.html, or a folder for hits.csv "
        "+ gallery PNG and HTML per query",
    )
    plots_arg(s)
    s.add_argument("--json", action="store_true", help="print hits as JSON records")
    s.set_defaults(func=cmd_search)


def parse_params(items: list[str]) -> dict:
    """``["nprobe=32", ...]`` -> ``{"nprobe": 32}`` (numbers parsed)."""
    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                raise ConfigError(f"--param {name} needs a number, got {value!r}") from None
    from mmpath.index._faiss import check_params

    return check_params(out)


def _table_paths(items, args) -> list[Path]:
    """Table files from the command line: files as given; a folder made by ``mmpath archive
    run`` gives its finished tables (``mmpath.archive.open``), any other folder every
    ``*.h5ad`` below it."""
    from mmpath.cli._common import warn
    from mmpath.index._source import read_light

    paths: list[Path] = []
    for item in map(Path, items):
        if not item.is_dir():
            paths.append(item)
            continue
        from mmpath.archive import open as open_archive
        from mmpath.archive.store import ArchiveStore

        if ArchiveStore(item).exists():  # an archive: its finished tables only
            found = [Path(p) for p in open_archive(item).table_paths()]
        else:  # a plain folder of tables
            found = sorted(item.rglob("*.h5ad"))
        if not found:
            raise IndexError_(f"{str(item)!r} holds no .h5ad tile tables")
        paths += found
    kept = []
    for p in progress(paths, args, desc="checking", unit="table"):
        if p.is_file() and skip_table(read_light(p), p):  # a slide table or an empty table
            continue
        kept.append(p)
    if not kept:
        warn("no tile tables to index")
    return kept


def cmd_build(args) -> int:
    from mmpath import index

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise IndexError_(f"{str(out)!r} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise IndexError_(f"{str(out)!r} is a file, not an index directory; pick a new path")
    from mmpath.io._atomic import recover

    recover(out)  # leftovers of a crashed earlier build (index folders can be large)
    source = _table_paths(args.tables, args)
    idx = index.build(
        source,
        use_rep=args.use_rep,
        factory=args.factory,
        params=parse_params(args.param) or None,
        workers=args.workers,
        out=out,
        center=args.center or args.whiten,
        whiten=args.whiten,
    )
    caveat((idx.manifest.get("embedding") or {}).get("caveat"))
    ran = idx.manifest.get("build") or {}
    procs = int(ran.get("processes", 1))
    if idx.on_disk:
        where = f"on disk, {ran.get('blocks', 1)} block(s) added by {procs} process(es)"
    else:
        where = "in memory, one process"
    if args.workers > procs:
        why = "a single block" if idx.on_disk else f"{idx.factory!r} is built in memory"
        where += f"; {procs} of --workers {args.workers} used: {why}"
    where = f" ({where})"
    summary(
        args,
        f"indexed {len(idx)} tiles of {len(idx.slide_ids)} slide(s) with {idx.factory!r}"
        f"{where} -> {out}",
    )
    return 0


def cmd_add(args) -> int:
    from mmpath import index

    before = index.read_manifest(args.index)["n_vectors"]
    idx = index.add(args.index, _table_paths(args.tables, args))
    summary(
        args,
        f"added {len(idx) - before} tiles; the index holds {len(idx)} tiles of "
        f"{len(idx.slide_ids)} slide(s)",
    )
    return 0


def cmd_remove(args) -> int:
    from mmpath import index

    if not args.slides and not args.compact:
        raise IndexError_("name the slide ids to remove (or pass --compact alone to compact)")
    m = index.read_manifest(args.index)
    idx = index.remove(args.index, args.slides, compact=args.compact)
    n = m["n_vectors"] - len(idx)
    left = index.read_manifest(args.index).get("n_removed", 0)
    kept = f"; {left} removed tile(s) kept as tombstones (--compact rewrites them)" if left else ""
    done = f"removed {n} tiles of {len(args.slides)} slide(s)"
    if not args.slides:
        done = f"compacted {m.get('n_removed', 0) - left} removed tile(s) out of the lists"
    summary(args, f"{done}; the index holds {len(idx)} tiles{kept}")
    return 0


def cmd_info(args) -> int:
    from mmpath import index

    m = index.read_manifest(args.index)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    for key in (
        "encoder",
        "embedding_key",
        "dim",
        "normalisation",
        "factory",
        "params",
        "n_vectors",
        "n_slides",
        "mmpath_version",
        "faiss_version",
    ):
        print(f"{key:15s} {m.get(key)}")
    if m.get("n_removed"):  # tombstones of an on-disk index
        print(f"{'n_removed':15s} {m['n_removed']} (skipped by searches; --compact drops them)")
    return 0


def _select_rows(table, rows: str | None):
    if rows is None:
        return table
    if ":" in rows:
        a, _, b = rows.partition(":")
        try:
            start, stop = int(a or 0), int(b) if b else None
        except ValueError:
            raise ConfigError(
                f"--rows {rows!r}: START:STOP must be whole numbers (e.g. 0:10), or pass "
                "comma-separated row names"
            ) from None
        return table[start:stop]
    names = [r.strip() for r in rows.split(",") if r.strip()]
    missing = [r for r in names if r not in table.obs_names]
    if missing:
        raise ConfigError(f"--rows: {missing[:3]} are not rows of the table")
    return table[names]


def cmd_search(args) -> int:
    from mmpath import index, io

    idx = index.load(args.index)
    encoder = args.encoder
    if encoder is not None:
        from mmpath.tl.embed import resolve_encoder

        encoder = resolve_encoder(encoder, weights=args.weights)
        encoder_caveat(encoder)
    caveat((idx.manifest.get("embedding") or {}).get("caveat"))
    params = parse_params(args.param) or None
    if args.tiles:
        query = _select_rows(io.read_h5ad(args.tiles), args.rows)
    else:
        query = args.image
    if args.slide_level:
        if args.text:
            raise ConfigError("--slide-level needs --image or --tiles queries, not --text")
        hits = idx.search_slides(
            query, args.k, mosaic=args.mosaic, encoder=encoder, where=args.where, params=params
        )
    elif args.text:
        hits = idx.search_text(
            args.text,
            args.k,
            encoder=encoder,
            where=args.where,
            min_distance=args.min_distance,
            params=params,
        )
    else:
        hits = idx.search_image(
            query,
            args.k,
            encoder=encoder,
            mpp=args.mpp,
            where=args.where,
            drop_neighbours=args.drop_neighbours,
            min_distance=args.min_distance,
            params=params,
        )
    out = Path(args.out) if args.out else None
    folder = out is not None and (out.is_dir() or not out.suffix or args.out.endswith(("/", "\\")))
    n_pics = 0
    if out is not None and out.suffix.lower() in (".png", ".html", ".htm"):
        n_pics = _galleries(hits, idx, query, args, out, one=True)
    elif folder:
        _write_hits(hits, out / "hits.csv")
        if want_plots(args, True):
            n_pics = _galleries(hits, idx, query, args, out)
    elif out is not None:
        _write_hits(hits, out)
        if want_plots(args, False):
            n_pics = _galleries(hits, idx, query, args, out.parent, stem=out.stem)
    if args.json:
        print(hits.to_json(orient="records"))
    elif not args.out:
        print(hits.to_string(index=False, max_colwidth=40))
    what = "slide(s)" if args.slide_level else "hit(s)"
    if not args.json:
        pics = f" ({n_pics} gallery file(s))" if n_pics else ""
        summary(args, f"{len(hits)} {what}" + (f" -> {args.out}{pics}" if args.out else ""))
    return 0


def _galleries(hits, idx, query, args, dest: Path, *, one: bool = False, stem: str = "gallery"):
    """Gallery pictures of the hits: ``dest`` itself when ``one`` (its suffix says PNG or
    HTML; the first query), else a PNG and an HTML page per query in folder ``dest``."""
    import matplotlib.pyplot as plt

    from mmpath import pl

    if args.slide_level:
        if one:
            raise ConfigError("--slide-level hits are slides, not tiles: write them to .csv")
        return 0
    queries = sorted(hits["query"].unique()) if "query" in hits else [0]
    if one and len(queries) > 1:
        log.info("%d queries: the gallery shows the first (use -o <folder> for all)", len(queries))
    n = 0
    for q in queries[:1] if one else queries:
        if args.text:
            qarg, label = None, f"text: {args.text[q]!r}"
        elif args.image:
            qarg, label = args.image[q], f"image: {Path(args.image[q]).name}"
        else:
            qarg, label = query[int(q) : int(q) + 1], f"tile {query.obs_names[int(q)]}"
        targets = [dest] if one else [dest / f"{stem}_{q}.png", dest / f"{stem}_{q}.html"]
        for target in targets:
            try:
                fig = pl.gallery(hits, idx, query=qarg, query_id=int(q), title=label, save=target)
                plt.close(fig)
                n += 1
            except MmpathError as err:
                plot_failed(target.name, err)
    return n


def _write_hits(hits, path: Path) -> None:
    from mmpath.io._atomic import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            hits.to_parquet(tmp)
        elif path.suffix in (".csv", ".tsv"):
            hits.to_csv(tmp, index=False, sep="\t" if path.suffix == ".tsv" else ",")
        else:
            raise ConfigError(
                f"--out must end in .csv, .tsv, .parquet (hits), .png or .html (gallery), or be "
                f"a folder; got {path.name!r}"
            )
