"""``mmpath embed``: embed tile tables (.h5ad) in place, resumably.

Each table is embedded with :func:`mmpath.tl.embed` and written back atomically. Finished
chunks are checkpointed next to the table (``<table>.h5ad.embed-<key>.partial/``), so an
interrupted run resumes where it stopped; a table that already holds the embedding from the
same encoder and weights is skipped (``--overwrite`` redoes it). The checkpoint is removed
once the table is written.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mmpath.cli._common import (
    device_arg,
    input_error,
    nonneg_int,
    parse_remap,
    progress,
    remap_arg,
    skip_table,
    summary,
)
from mmpath.errors import MmpathError

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
    p.add_argument(
        "--overwrite", action="store_true", help="re-embed tables that already hold this embedding"
    )
    p.set_defaults(func=cmd_embed)


def _done(adata, key: str, encoder_name: str, weights) -> bool:
    from mmpath import _keys as K
    from mmpath.io import _prov

    rec = _prov.plain(_prov.root(adata).get(K.UNS_EMBEDDINGS, {})).get(key)
    return (
        key in adata.obsm
        and rec is not None
        and rec.get("encoder") == encoder_name
        and rec.get("weights") == weights
    )


def embed_table(path: Path, encoder, args, remap) -> tuple[str, int]:
    """Embed one table file; returns (status, n_tiles) with status 'done' or 'skipped'."""
    from mmpath import io, tl
    from mmpath.io._atomic import recover
    from mmpath.tl._checkpoint import sidecar_path
    from mmpath.tl.embed import _weights_id, embedding_key

    recover(path)  # a crashed earlier run's half-written copy of this table
    adata = io.read_h5ad(path)
    if skip_table(adata, path):
        return "not tiles", 0
    key = embedding_key(encoder.info, args.key_added)
    weights = _weights_id(encoder, args.weights)
    if not args.overwrite and _done(adata, key, encoder.info.name, weights):
        log.info("%s already holds %s from %s; skipping", path, key, encoder.info.name)
        return "skipped", adata.n_obs
    ckpt = sidecar_path(path, key)
    tl.embed(
        adata,
        encoder,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        key_added=args.key_added,
        remap=remap,
        chunk_size=args.chunk_size,
        checkpoint=ckpt,
    )
    if args.weights is not None:  # record the weights as the user named them
        from mmpath import _keys as K
        from mmpath.io import _prov

        _prov.root(adata)[K.UNS_EMBEDDINGS][key]["weights"] = weights
    io.write_h5ad(adata, path)
    shutil.rmtree(ckpt, ignore_errors=True)  # only once the table is safely written
    return "done", adata.n_obs


def cmd_embed(args) -> int:
    from mmpath.tl.embed import resolve_encoder

    remap = parse_remap(args.remap)
    encoder = resolve_encoder(args.encoder, weights=args.weights, device=args.device)
    n_done = n_skipped = n_tiles = 0
    failures = []
    for name in progress(args.tables, args, desc="embedding", unit="table"):
        path = Path(name)
        try:
            status, n = embed_table(path, encoder, args, remap)
        except MmpathError as err:
            input_error(f"{path}: {err}")
            failures.append(path)
            continue
        n_tiles += n
        if status == "skipped":
            n_skipped += 1
        elif status == "done":
            n_done += 1
    summary(
        args,
        f"embedded {n_done}/{len(args.tables)} table(s) with {args.encoder} "
        f"({n_tiles} tiles"
        + (f", {n_skipped} already done" if n_skipped else "")
        + ")"
        + (f"; {len(failures)} failed" if failures else ""),
    )
    return 2 if failures else 0
