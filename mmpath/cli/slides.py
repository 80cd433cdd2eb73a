"""``mmpath info`` and ``mmpath tile``."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from mmpath import _keys as K
from mmpath._names import check_name
from mmpath.cli._common import (
    estimate_mpp_arg,
    input_error,
    progress,
    slide_mpp_arg,
    summary,
    warn,
)
from mmpath.errors import MmpathError, SlideError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("info", help="print a slide's dimensions, levels, mpp and metadata")
    p.add_argument("slides", nargs="+", help="slide files")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--no-estimate", action="store_true", help="skip estimating the mpp from the nuclei"
    )
    slide_mpp_arg(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tile", help="detect tissue and tile slides into .h5ad tile tables")
    p.add_argument("slides", nargs="+", help="slide files")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--size", type=int, default=224, help="tile side in pixels (224)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mpp", type=float, default=None, help="target µm/px of the tiles")
    g.add_argument("--level", type=int, default=None, help="tile at this pyramid level")
    p.add_argument("--overlap", type=int, default=0, help="overlap between tiles in pixels")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction")
    p.add_argument("--no-thumbnail", action="store_true", help="skip the grid thumbnail PNG")
    p.add_argument("--overwrite", action="store_true", help="redo slides whose table exists")
    slide_mpp_arg(p)
    estimate_mpp_arg(p)
    p.set_defaults(func=cmd_tile)


def cmd_info(args) -> int:
    from mmpath.io import open_slide

    failed = 0
    for path in args.slides:
        try:
            with open_slide(path, mpp=args.slide_mpp) as slide:
                info = slide.provenance()
                info["slide_id"] = slide.slide_id
                info["level_dimensions"] = [list(d) for d in slide.level_dimensions]
                info["associated_images"] = slide.associated_image_names()
                info["properties"] = dict(slide.properties)
                if not args.no_estimate:
                    info["mpp_estimate"] = _estimate_for_info(slide)
        except MmpathError as err:
            if args.debug:
                raise
            input_error(str(err))
            failed += 1
            continue
        verdict = _mpp_verdict(info)
        if verdict:
            warn(f"{path}: {verdict}")
        if args.json:
            print(json.dumps(info, indent=2))
            continue
        mpp = f"{info['mpp']:.4g} µm/px ({info['mpp_source']})" if info["mpp"] else "unknown"
        print(f"{info['slide_id']}: {path}")
        print(f"  vendor     {info['vendor']} ({info['backend']})")
        print(f"  size       {info['dims'][0]} x {info['dims'][1]} px, mpp {mpp}")
        est = info.get("mpp_estimate")
        if isinstance(est, dict):
            print(
                f"  estimate   {est['mpp']:.3g} µm/px from {est['n_nuclei']} nuclei "
                f"(confidence {est['confidence']:.2f}, range {est['low']:.3g}-{est['high']:.3g})"
            )
        elif est:
            print(f"  estimate   none ({est})")
        for i, (d, ds) in enumerate(zip(info["level_dimensions"], info["level_downsamples"])):
            print(f"  level {i}    {d[0]} x {d[1]} (downsample {ds:.4g})")
        if info["associated_images"]:
            print(f"  associated {', '.join(info['associated_images'])}")
    return 2 if failed else 0


def _estimate_for_info(slide) -> dict | str:
    """The nuclei-based estimate as a dict, or why there is none (one line)."""
    from mmpath.pp import estimate_mpp

    try:  # a quick look: 3 patches (tiling's --estimate-mpp measures 6)
        return estimate_mpp(slide, n_patches=3).to_dict()
    except MmpathError as err:
        return str(err)


def _mpp_verdict(info: dict) -> str | None:
    """One warning when the mpp is unknown or disagrees with the estimate (the mpp rule)."""
    from mmpath.io._mpp import DISAGREE_FACTOR, disagreement

    est = info.get("mpp_estimate")
    est_mpp = est["mpp"] if isinstance(est, dict) else None
    if info["mpp"] is None:
        guess = f"; the nuclei suggest ~{est_mpp:.3g} µm/px" if est_mpp else ""
        return (
            "no plausible mpp in the metadata" + guess + ": tile/embed need --slide-mpp or "
            "--estimate-mpp"
        )
    ratio = disagreement(info["mpp"], est_mpp)
    if ratio is not None and ratio > DISAGREE_FACTOR:
        return (
            f"mpp {info['mpp']:.4g} µm/px ({info['mpp_source']}) and the {est_mpp:.3g} "
            f"estimated from the nuclei differ {ratio:.1f}x (> {DISAGREE_FACTOR}x); check the "
            "scan's magnification, override with --slide-mpp"
        )
    return None


def _thumbnail_path(out: Path, slide_id: str, inputs: set[Path]) -> Path:
    """``<out>/<slide_id>.png``, unless that is one of the input files (``-o`` next to PNGs)."""
    png = out / f"{slide_id}.png"
    return out / f"{slide_id}.tiles.png" if png.resolve() in inputs else png


# The CLI settings that decide a slide's tile table, recorded in its tiling provenance so a
# rerun can tell whether an existing table answers the same request.
_REQUEST = "cli_request"


def _request(args) -> dict:
    return {
        "size": args.size,
        "mpp": args.mpp,
        "level": args.level,
        "overlap": args.overlap,
        "min_tissue": args.min_tissue,
        "slide_mpp": args.slide_mpp,
    }


def _reusable(target: Path, slide, sid: str, args):
    """The existing table at ``target`` when it was tiled from this slide file with the same
    settings; a :class:`SlideError` naming ``--overwrite`` when it was not."""
    from mmpath import io
    from mmpath.io import _prov

    try:
        done = io.read_h5ad(target)
        rec = _prov.plain(_prov.root(done)[K.UNS_SLIDES]).get(sid, {})
    except (MmpathError, OSError, KeyError, TypeError, ValueError):
        rec, done = {}, None
    other = rec.get("path")
    if other and slide.path and Path(other) != Path(slide.path):
        raise SlideError(
            f"{str(target)!r} already holds slide {sid!r} tiled from {other!r}, not "
            "from this file; use another -o folder, or --overwrite to replace it"
        )
    made = rec.get(K.UNS_TILING, {}).get(_REQUEST) if done is not None else None
    now = _request(args)
    if made is None:
        raise SlideError(
            f"{str(target)!r} exists but does not record the settings it was tiled with "
            "(unreadable, or made by another tool or version); pass --overwrite to redo it"
        )
    diff = [f"{k} {made.get(k)!r} -> {v!r}" for k, v in now.items() if made.get(k) != v]
    if diff:
        raise SlideError(
            f"{str(target)!r} was tiled with other settings ({'; '.join(diff)}); pass "
            "--overwrite to redo it (this replaces the table and anything added to it)"
        )
    return done


def tile_one(
    path: str, args, seen: dict[str, str] | None = None, inputs: set[Path] | None = None
) -> tuple[int, Path]:
    """Tile one slide into ``<out>/<slide_id>.h5ad`` (+ thumbnail); returns (n_tiles, path).

    ``seen`` maps the slide ids tiled earlier in this run to their files: two files with one
    stem would share a table, so the second is refused instead of silently skipped.
    ``inputs`` (the run's resolved input files) are never overwritten by a thumbnail.
    """
    from mmpath import io, pl, pp
    from mmpath.io._atomic import recover
    from mmpath.pp.mpp import settle_mpp

    out = Path(args.out)
    seen = {} if seen is None else seen
    with io.open_slide(path, mpp=args.slide_mpp) as slide:
        sid = check_name(slide.slide_id, what="slide id")
        if sid in seen and seen[sid] != slide.path:
            raise SlideError(
                f"slide id {sid!r} is also the id of {seen[sid]!r} in this run and both would "
                "write one table; rename one file or tile them into separate -o folders"
            )
        seen[sid] = slide.path
        target = out / f"{sid}.h5ad"
        recover(target)  # leftovers of a crashed earlier run of this output
        png = None
        if not args.no_thumbnail:
            own = {Path(slide.path or path).resolve()}
            png = _thumbnail_path(out, sid, (inputs or set()) | own)
        if target.exists() and not args.overwrite:
            done = _reusable(target, slide, sid, args)
            if done is not None:
                if png is not None and not png.is_file():
                    log.info("%s lacks its thumbnail; drawing it", target)
                    mask = pp.detect_tissue(slide)
                    pl.tiles(done, slide, color=K.TISSUE_FRAC, tissue=mask, save=png)
                else:
                    log.info("%s exists with the same settings; skipping", target)
                return done.n_obs, target
        # the mpp rule (refuse when unknown), after the skip: an estimate costs seconds
        settle_mpp(slide, estimate=args.estimate_mpp)
        mask = pp.detect_tissue(slide)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # empty slides are reported below
            tiles = pp.tile(
                slide,
                args.size,
                mpp=args.mpp,
                level=args.level,
                overlap=args.overlap,
                min_tissue=args.min_tissue,
                tissue=mask,
            )
        tiles.uns[K.UNS][K.UNS_SLIDES][sid][K.UNS_TILING][_REQUEST] = _request(args)
        io.write_h5ad(tiles, target)
        if png is not None:
            pl.tiles(tiles, slide, color=K.TISSUE_FRAC, tissue=mask, save=png)
    return tiles.n_obs, target


class _NoTissueNote(logging.Filter):
    """``detect_tissue``'s per-slide "no tissue detected" is said once for the run by
    ``cmd_tile``'s summary instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "no tissue detected" not in record.getMessage()


def cmd_tile(args) -> int:
    from mmpath.errors import ConfigError

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"-o {args.out!r} is a file; pass a folder for the tile tables")
    note = _NoTissueNote()
    logging.getLogger("mmpath.pp.tissue").addFilter(note)
    try:
        return _tile_all(args)
    finally:
        logging.getLogger("mmpath.pp.tissue").removeFilter(note)


def _tile_all(args) -> int:
    n_ok, n_tiles, failures, empty = 0, 0, [], []
    seen: dict[str, str] = {}
    inputs = {Path(p).resolve() for p in args.slides}
    for path in progress(args.slides, args, desc="tiling", unit="slide"):
        try:
            n, _ = tile_one(path, args, seen, inputs)
        except MmpathError as err:
            if args.debug:
                raise
            input_error(f"{path}: {err}")
            failures.append(path)
            continue
        if n == 0:
            empty.append(Path(path).name)
        n_ok += 1
        n_tiles += n
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        warn(
            f"{len(empty)} slide(s) had no tissue tiles (empty tables written; lower "
            f"--min-tissue or check them): {shown}"
        )
    summary(
        args,
        f"tiled {n_ok}/{len(args.slides)} slide(s): {n_tiles} tiles -> {args.out}"
        + (f"; {len(failures)} failed" if failures else ""),
    )
    return 2 if failures else 0
