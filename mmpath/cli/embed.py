"""``mmpath embed``: embed tile tables (.h5ad) in place, resumably.

Each table is embedded with :func:`mmpath.tl.embed` and written back atomically. Finished
chunks are checkpointed next to the table (``<table>.h5ad.embed-<key>.partial/``), so an
interrupted run resumes where it stopped; a table that already holds the embedding from the
same encoder and weights is skipped (``--overwrite`` redoes it). The checkpoint is removed
once the table is written. Tables smaller than one chunk (TMA cores, crop datasets: nothing to
resume inside them) are embedded together in shared batches, up to a chunk of tiles at a time,
then each is written back; per-table fixed costs (worker start-up, checkpoint files, one
forward pass per tiny table) would otherwise dominate.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from mmpath.cli._common import (
    device_arg,
    encoder_caveat,
    estimate_mpp_arg,
    input_error,
    nonneg_int,
    parse_remap,
    progress,
    remap_arg,
    skip_table,
    slide_mpp_arg,
    summary,
)
from mmpath.errors import MmpathError, SlideError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed the tiles of .h5ad tile tables with an encoder")
    p.add_argument("tables", nargs="+", help="tile tables (.h5ad) made by `mmpath tile`")
    p.add_argument("--encoder", required=True, help="registry name (see `mmpath list`)")
    p.add_argument("--weights", default=None, help="weights file or folder for the encoder")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass (64)")
    p.add_argument(
        "--num-workers",
        type=nonneg_int,
        default=None,
        help="reader processes (default: up to 2; 0 reads in the main process)",
    )
    p.add_argument(
        "--device", type=device_arg, default=None, help="cpu, cuda, cuda:1... (default: auto)"
    )
    p.add_argument("--key-added", default=None, help="obsm key (default X_<encoder slug>)")
    p.add_argument(
        "--chunk-size", type=int, default=2048, help="tiles per checkpointed chunk (2048)"
    )
    remap_arg(p)
    slide_mpp_arg(p)
    estimate_mpp_arg(p)
    p.add_argument(
        "--stain",
        choices=["macenko", "reinhard"],
        default=None,
        help="stain-normalise tiles to --stain-target before the encoder",
    )
    p.add_argument(
        "--stain-target", default=None, help="reference image or slide for --stain (ref.png)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="re-embed tables that already hold this embedding"
    )
    p.set_defaults(func=cmd_embed)


def _done(adata, key: str, encoder_name: str, weights, stain=None) -> bool:
    from mmpath import _keys as K
    from mmpath.io import _prov

    rec = _prov.plain(_prov.root(adata).get(K.UNS_EMBEDDINGS, {})).get(key)
    return (
        key in adata.obsm
        and rec is not None
        and rec.get("encoder") == encoder_name
        and rec.get("weights") == weights
        and rec.get("stain") == stain
    )


def _settle_table_mpp(adata, args, remap) -> bool:
    """The mpp rule for tables: a slide tiled without a known mpp is refused unless
    ``--slide-mpp`` or ``--estimate-mpp`` gives one (recorded in the table's provenance).
    Returns whether a slide record changed."""
    from mmpath import io
    from mmpath.io import _prov
    from mmpath.io._mpp import check_mpp
    from mmpath.pp.mpp import settle_mpp

    changed = False
    for sid in _prov.slide_ids(adata):
        rec = _prov.slide_record(adata, sid)
        known = rec.get("mpp") is not None
        if args.slide_mpp is not None and not known:
            mpp = check_mpp(args.slide_mpp, what=f"slide {sid!r}")
            _prov.set_slide_mpp(adata, sid, mpp, source="override")
            changed = True
        elif args.estimate_mpp:
            with io.open_slide_from(adata, sid, remap=remap) as slide:
                est = settle_mpp(slide, estimate=True)
                if not known:
                    _prov.set_slide_mpp(
                        adata, sid, slide.mpp, source="estimate", estimate=est.to_dict()
                    )
                    changed = True
        elif not known:
            raise SlideError(
                f"slide {sid!r} was tiled without a known mpp, so its tiles' magnification is "
                "unknown; give it with --slide-mpp (e.g. --slide-mpp 0.5) or --estimate-mpp"
            )
    return changed


def _open_table(path: Path, encoder, args, remap, stain=None):
    """``(status, adata, key, weights)``: status 'todo' (the file is unchanged apart from
    what embedding adds), 'todo-changed' (the slide records changed too: ``--slide-mpp``,
    ``--estimate-mpp``), 'skipped' or 'not tiles'."""
    from mmpath import io
    from mmpath.tl.embed import _weights_id, embedding_key

    _recover(path, args)  # a crashed earlier run's half-written copy of this table
    adata = io.read_h5ad(path)
    key = embedding_key(encoder.info, args.key_added)
    weights = _weights_id(encoder, args.weights)
    if skip_table(adata, path):
        return "not tiles", adata, key, weights
    stain_rec = None if stain is None else stain.to_dict()
    if not args.overwrite and _done(adata, key, encoder.info.name, weights, stain_rec):
        log.info("%s already holds %s from %s; skipping", path, key, encoder.info.name)
        return "skipped", adata, key, weights
    changed = _settle_table_mpp(adata, args, remap)
    return "todo-changed" if changed else "todo", adata, key, weights


def _recover(path: Path, args) -> None:
    """:func:`~mmpath.io._atomic.recover` for ``path``, listing each folder once per run
    (not once per table: 1,000 tables in one folder made that quadratic)."""
    from mmpath.io._atomic import recover

    folder = path.parent.resolve()
    if folder not in args.hidden_names:
        try:
            args.hidden_names[folder] = {n for n in os.listdir(folder) if n.startswith(".")}
        except OSError:
            args.hidden_names[folder] = None  # unreadable: let recover() look
    names = args.hidden_names[folder]
    if names is None or any(n.startswith(f".{path.name}.") for n in names):
        recover(path)


def _embed_kwargs(args, remap) -> dict:
    return {
        "stain": args.stain_fitted,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "key_added": args.key_added,
        "remap": remap,
        "chunk_size": args.chunk_size,
    }


def _write(path: Path, adata, key: str, weights, args, added_only: bool) -> None:
    """Write the table back. ``added_only``: the file on disk differs from ``adata`` only by
    what embedding adds, so only that is written (:mod:`mmpath.io._h5patch`; equal to a
    full write, much faster for tiny tables)."""
    from mmpath import _keys as K
    from mmpath import io
    from mmpath.io import _prov
    from mmpath.io._h5patch import write_added

    if args.weights is not None:  # record the weights as the user named them
        _prov.root(adata)[K.UNS_EMBEDDINGS][key]["weights"] = weights
    if not added_only:
        io.write_h5ad(adata, path)
        return
    proj = f"{key}{K.PROJ_SUFFIX}"
    write_added(
        adata,
        path,
        path,
        obsm=[key] + ([proj] if proj in adata.obsm else []),
        obs=[K.TILE_OK],
        uns=(K.UNS, K.UNS_EMBEDDINGS, key),
        cache=args.h5_cache,
        recovered=True,  # by _open_table
    )


def _embed_opened(path: Path, adata, key, weights, encoder, args, remap, added_only) -> None:
    from mmpath import tl
    from mmpath.tl._checkpoint import sidecar_path

    ckpt = sidecar_path(path, key)
    tl.embed(adata, encoder, **_embed_kwargs(args, remap), checkpoint=ckpt)
    _write(path, adata, key, weights, args, added_only)
    shutil.rmtree(ckpt, ignore_errors=True)  # only once the table is safely written


def embed_group(group: list, encoder, args, remap) -> None:
    """Embed several small tables (each under one chunk: nothing to resume inside them) in
    shared batches (``tl.embed`` packs small slides), then write each back atomically.
    ``group`` holds ``(path, adata, key, weights, added_only)``."""
    from mmpath import _keys as K
    from mmpath import io, tl
    from mmpath.io import _prov

    cohort = io.concat([g[1] for g in group])
    tl.embed(cohort, encoder, **_embed_kwargs(args, remap))
    key = group[0][2]
    proj_key = f"{key}{K.PROJ_SUFFIX}"
    rec = _prov.plain(_prov.root(cohort)[K.UNS_EMBEDDINGS][key])
    start = 0
    for path, adata, _, weights, added_only in group:
        stop = start + adata.n_obs
        adata.obsm[key] = cohort.obsm[key][start:stop]
        if proj_key in cohort.obsm:
            adata.obsm[proj_key] = cohort.obsm[proj_key][start:stop]
        adata.obs[K.TILE_OK] = cohort.obs[K.TILE_OK].to_numpy()[start:stop]
        sids = [str(s) for s in adata.obs[K.SLIDE_ID].unique()]  # not a scan of all slides
        pre = rec["preprocess"]
        own = dict(rec, preprocess={s: pre[s] for s in sids if s in pre})
        own["n_failed"] = int((~adata.obs[K.TILE_OK].to_numpy(bool)).sum())
        root = _prov.root(adata)
        root[K.UNS_EMBEDDINGS] = {**_prov.plain(root.get(K.UNS_EMBEDDINGS, {})), key: own}
        _write(path, adata, key, weights, args, added_only)
        start = stop


def _stain_target(args):
    """``--stain`` + ``--stain-target`` -> a fitted :class:`~mmpath.pp.StainTarget`."""
    from mmpath.errors import ConfigError

    if args.stain is None:
        if args.stain_target is not None:
            raise ConfigError("--stain-target needs --stain macenko|reinhard")
        return None
    if args.stain_target is None:
        raise ConfigError(f"--stain {args.stain} needs --stain-target REF (an image or slide)")
    from mmpath.pp.stain import fit_stain_target

    if not Path(args.stain_target).exists():
        raise ConfigError(f"--stain-target {args.stain_target!r} does not exist")
    return fit_stain_target(args.stain_target, method=args.stain)


def _has_checkpoint(path: Path, key: str) -> bool:
    from mmpath.tl._checkpoint import sidecar_path

    return sidecar_path(path, key).exists()


def cmd_embed(args) -> int:
    from mmpath.cli._catalog import check_encoder

    remap = parse_remap(args.remap)
    args.stain_fitted = _stain_target(args)  # a bad target fails before the model loads
    check_encoder(args.encoder, args.weights)  # unknown name, missing weights: no torch yet
    from mmpath.tl.embed import resolve_encoder

    encoder = resolve_encoder(args.encoder, weights=args.weights, device=args.device)
    encoder_caveat(encoder)
    from mmpath.io._h5patch import SubtreeCache

    args.h5_cache = SubtreeCache()  # provenance shared by the tables, encoded once
    args.hidden_names = {}  # folder -> its dot-files (leftovers of crashed writes), listed once
    n_done = n_skipped = n_tiles = 0
    failures = []
    group: list = []  # small tables waiting to share batches
    group_tiles = [0]  # their tiles

    def flush() -> int:
        """Embed the waiting small tables together; a failure falls back to one by one,
        so its error names the table."""
        done = 0
        if len(group) > 1:
            try:
                embed_group(group, encoder, args, remap)
                done = len(group)
            except MmpathError:
                log.info("a table of a shared batch failed; embedding them one by one")
        if not done:
            for path, adata, key, weights, added_only in group:
                try:
                    _embed_opened(path, adata, key, weights, encoder, args, remap, added_only)
                    done += 1
                except MmpathError as err:
                    input_error(f"{path}: {err}")
                    failures.append(path)
        group.clear()
        group_tiles[0] = 0
        return done

    for name in progress(args.tables, args, desc="embedding", unit="table"):
        path = Path(name)
        try:
            status, adata, key, weights = _open_table(path, encoder, args, remap, args.stain_fitted)
        except MmpathError as err:
            input_error(f"{path}: {err}")
            failures.append(path)
            continue
        if status == "skipped":
            n_skipped += 1
            n_tiles += adata.n_obs
            continue
        if status not in ("todo", "todo-changed"):
            continue
        added_only = status == "todo"
        n_tiles += adata.n_obs
        small = adata.n_obs < args.chunk_size and not _has_checkpoint(path, key)
        if small:
            group.append((path, adata, key, weights, added_only))
            group_tiles[0] += adata.n_obs  # a running total (a sum per table was quadratic)
            if group_tiles[0] >= args.chunk_size:
                n_done += flush()
            continue
        try:
            _embed_opened(path, adata, key, weights, encoder, args, remap, added_only)
            n_done += 1
        except MmpathError as err:
            input_error(f"{path}: {err}")
            failures.append(path)
    n_done += flush()
    summary(
        args,
        f"embedded {n_done}/{len(args.tables)} table(s) with {args.encoder} "
        f"({n_tiles} tiles"
        + (f", {n_skipped} already done" if n_skipped else "")
        + ")"
        + (f"; {len(failures)} failed" if failures else ""),
    )
    return 2 if failures else 0
