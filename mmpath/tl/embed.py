"""Embedding tile tables and prompts with an encoder.

* :func:`embed_slide` is the core: a pure function of one slide's tiles and an encoder
  (no global state, nothing written), so a distributed engine can map it over an archive.
* :func:`embed` runs it slide by slide over a one-slide or cohort table and writes
  ``obsm["X_<slug>"]`` (+ ``obsm["X_<slug>_proj"]`` for image-text models), ``obs["tile_ok"]``
  and the provenance in ``uns["mmpath"]["embeddings"][key]``.
* :func:`embed_text` embeds prompts with the text tower.

How resume works: with ``checkpoint=<dir>`` (the CLI always passes one, next to the table),
each slide's rows are cut into chunks of ``chunk_size`` tiles (whole batches) and every
finished chunk is saved atomically into that directory. A re-run with the same encoder,
weights, table and sizes loads the finished chunks and only computes the rest, so a
finished slide costs nothing and an interrupted one restarts at its last chunk. Because
chunks hold whole batches, the model sees the same batches as in an uninterrupted run and the
results are bit-identical. The output table itself is written once at the end (atomically,
by the caller), so an interrupted run never leaves a table that looks embedded.

Streaming: a ``torch`` DataLoader over :class:`mmpath.io.TileReader` reads and preprocesses
tiles in worker processes (each reopens its slides) while the main process runs the model
under ``torch.inference_mode``; on CUDA with autocast and channels_last. Only the embeddings
are kept, so memory does not grow with the number of tiles beyond ``n x dim`` floats.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath._settings import default_num_workers
from mmpath._version import __version__
from mmpath.errors import DataError, ModelError
from mmpath.io import _prov
from mmpath.io.slide import Slide
from mmpath.io.tiles import Remap
from mmpath.tl import _embed_data as D
from mmpath.tl._checkpoint import ChunkStore, pixels_fingerprint

log = logging.getLogger(__name__)

__all__ = ["embed", "embed_slide", "SlideEmbedding"]

DEFAULT_CHUNK = 2048


class SlideEmbedding(NamedTuple):
    """What :func:`embed_slide` returns for one slide's tiles (rows in table order)."""

    features: np.ndarray  # (n, embed_dim) float32
    proj: np.ndarray | None  # (n, proj_dim) float32, L2-normalised; None for image-only models
    ok: np.ndarray  # (n,) bool: False where the region was damaged (read as white)


# -- encoder and device ---------------------------------------------------------------------


def resolve_encoder(encoder, *, weights: str | None = None, device: str | None = None):
    """An :class:`~mmpath.models.base.Encoder` from a registry name or an instance.

    The one factory, :func:`mmpath.models.factory.create_encoder` (kept under this name for
    the callers in ``tl``, ``index``, ``serve``, ``archive`` and the CLI).
    """
    from mmpath.models.factory import create_encoder

    return create_encoder(encoder, weights=weights, device=device)


def _device_of(model, device: str | None):
    import torch

    from mmpath.models.factory import check_device

    if device is not None:
        return torch.device(check_device(device))
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type != "cpu":
        return param.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _caveat(model) -> str:
    from mmpath.models.caveats import caveat

    return caveat(model) if hasattr(model, "info") else ""


def _weights_id(model, weights: str | None) -> str | None:
    """A JSON-able description of the weights the model carries."""
    if weights is not None:
        return str(weights)
    for attr in ("weights_source", "weights_path", "weights"):
        val = getattr(model, attr, None)
        if isinstance(val, (str, os.PathLike)):
            return str(val)
    return model.info.weights or None


def _param_digest(model) -> str:
    """A cheap fingerprint of the weights (a strided sample of every tensor), so a checkpoint
    made with other weights (e.g. another random init) is never mixed in."""
    import hashlib

    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)].to("cpu", torch.float64)
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# -- the per-slide core ---------------------------------------------------------------------


def _prepare(model, device) -> None:
    import torch

    model.eval()
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)


def _iter_chunks(
    tiles,
    model,
    *,
    slide: Slide | None,
    batch_size: int,
    num_workers: int,
    device,
    remap: Remap,
    chunk_size: int,
    skip: Callable[[int, int], bool] = lambda start, stop: False,
    stain=None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None, np.ndarray]]:
    """Embed one slide's tiles chunk by chunk: yields ``(start, stop, feats, proj, ok)``.

    Chunks for which ``skip(start, stop)`` is true are not computed (nor yielded).
    """
    n = tiles.n_obs
    if n == 0:
        return
    sid = _prov.slide_ids(tiles)
    if len(sid) != 1:
        raise DataError(f"embed_slide takes one slide's tiles, got {len(sid)} slides")
    prep = D.slide_preprocess(tiles, sid[0], model.info.data, stain=stain)
    todo = [(a, b) for a, b in D.chunk_bounds(n, chunk_size) if not skip(a, b)]
    if not todo:
        return
    batches = [bt for a, b in todo for bt in D.batches_of(a, b, batch_size)]
    dataset = D.EmbedDataset(tiles, prep, slide=slide, remap=remap)
    loader = D.make_loader(
        dataset,
        batches,
        num_workers=D.useful_workers(num_workers, len(batches)),
        pin_memory=device.type == "cuda",
    )
    pending = iter(todo)
    cur = next(pending)
    buf: dict[str, Any] = {}

    def start_chunk(bounds):
        a, b = bounds
        buf.update(bounds=bounds, feats=None, proj=None, ok=np.ones(b - a, bool), filled=0)

    start_chunk(cur)
    done: list[tuple] = []

    def on_batch(idx, feats, proj, ok):
        a, b = buf["bounds"]
        if buf["feats"] is None:
            buf["feats"] = np.empty((b - a, feats.shape[1]), np.float32)
            if proj is not None:
                buf["proj"] = np.empty((b - a, proj.shape[1]), np.float32)
        rel = idx - a
        buf["feats"][rel] = feats
        if proj is not None:
            buf["proj"][rel] = proj
        buf["ok"][rel] = ok
        buf["filled"] += len(idx)
        if buf["filled"] == b - a:
            done.append((a, b, buf["feats"], buf["proj"], buf["ok"]))
            nxt = next(pending, None)
            if nxt is not None:
                start_chunk(nxt)

    # The DataLoader is consumed batch by batch; finished chunks are handed out as they close.
    for idx, feats, proj, ok in D.forward_batches(loader, model, device):
        on_batch(idx, feats, proj, ok)
        while done:
            yield done.pop(0)


def embed_slide(
    tiles,
    encoder,
    *,
    slide: Slide | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | None = None,
    remap: Remap = None,
) -> SlideEmbedding:
    """Embed one slide's tiles; a pure function (the table is not modified).

    Parameters
    ----------
    tiles
        A tile table holding a single slide's rows.
    encoder
        An :class:`~mmpath.models.base.Encoder` (or a registry name).
    slide
        The open slide, or ``None`` to reopen it from provenance.
    batch_size, num_workers, device, remap
        As in :func:`embed`.

    Returns
    -------
    A :class:`SlideEmbedding` with features, projections (or ``None``) and tile-ok flags.

    Example
    -------
    >>> res = mm.tl.embed_slide(tiles[tiles.obs.slide_id == "s1"], enc)
    """
    model = resolve_encoder(encoder, device=device)
    dev = _device_of(model, device)
    _prepare(model, dev)
    n = tiles.n_obs
    feats = np.zeros((n, model.info.embed_dim), np.float32)
    proj = None
    ok = np.ones(n, bool)
    for a, b, f, p, o in _iter_chunks(
        tiles,
        model,
        slide=slide,
        batch_size=batch_size,
        num_workers=num_workers,
        device=dev,
        remap=remap,
        chunk_size=D.round_chunk(max(n, 1), batch_size),
    ):
        feats[a:b] = f
        if p is not None:
            if proj is None:
                proj = np.zeros((n, p.shape[1]), np.float32)
            proj[a:b] = p
        ok[a:b] = o
    return SlideEmbedding(feats, proj, ok)


# -- tables ---------------------------------------------------------------------------------


def embedding_key(encoder_info, key_added: str | None = None) -> str:
    """The obsm key an encoder writes (``X_<slug>`` unless ``key_added``)."""
    key = key_added or K.rep_key(encoder_info.slug or K.slugify(encoder_info.name))
    if "/" in key or not key:
        raise DataError(f"key_added {key!r} is not a valid h5ad key (no '/' allowed)")
    return key


def _check_table(adata) -> list[str]:
    if adata.n_obs == 0:
        return []
    ids = _prov.slide_ids(adata)
    for sid in ids:
        _prov.tiling(adata, sid)  # raises a DataError that says what is missing
    return ids


def embed(
    adata,
    encoder,
    *,
    slide: Slide | None = None,
    weights: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    key_added: str | None = None,
    remap: Remap = None,
    chunk_size: int = DEFAULT_CHUNK,
    checkpoint: str | os.PathLike[str] | None = None,
    stain=None,
) -> None:
    """Embed every tile of a tile table with an image encoder (in place).

    Parameters
    ----------
    adata
        A tile table from :func:`mmpath.pp.tile` (one slide) or :func:`mmpath.io.concat`.
    encoder
        A registry name (``"uni"``, ``"timm:vit_small_patch16_224"``...) or an
        :class:`~mmpath.models.base.Encoder` from :func:`mmpath.models.create_encoder`.
    slide
        The open slide for a one-slide table (required for in-memory slides); ``None``
        reopens every slide from the table's provenance.
    weights
        Weights for an encoder given by name (file, ``local-dir:`` path...).
    batch_size
        Tiles per forward pass.
    num_workers
        Reader processes; ``None`` picks :func:`default_num_workers`, 0 reads in this process.
    device
        ``"cpu"``, ``"cuda"``...; ``None`` uses the model's device, else CUDA when available.
    key_added
        obsm key of the features (default ``X_<slug>``); projections go to ``<key>_proj``.
    remap
        ``{old_prefix: new_prefix}`` (or a function) for slide archives that moved.
    chunk_size
        Tiles per checkpointed chunk (rounded up to whole batches).
    checkpoint
        A directory to checkpoint finished chunks in; a re-run with the same arguments
        resumes from it (see the module docstring). ``None`` keeps nothing.
    stain
        A :class:`~mmpath.pp.StainTarget` (from :func:`mmpath.pp.fit_stain_target`, or its
        ``to_dict()``): every slide's tiles are stain-normalised to it before the model (the
        slide's own stain fitted once on its thumbnail). Recorded in the provenance. A model
        folder trained with ``data.stain`` carries its target (``stain_target.json``), used
        when ``stain`` is ``None``.

    Returns
    -------
    None. Writes ``obsm[key]`` (float32), ``obsm[key + "_proj"]`` for image-text models,
    ``obs["tile_ok"]`` (False for damaged regions, whose rows hold the embedding of a white
    tile) and ``uns["mmpath"]["embeddings"][key]``.

    Example
    -------
    >>> enc = mm.models.create_encoder("tiny_vit")
    >>> mm.tl.embed(tiles, enc, batch_size=64)
    >>> tiles.obsm["X_tiny_vit"].shape
    """
    ids = _check_table(adata)
    if batch_size <= 0:
        raise DataError(f"batch_size must be > 0, got {batch_size}")
    if num_workers is not None and int(num_workers) < 0:
        raise DataError(f"num_workers must be >= 0 (0 reads in this process), got {num_workers}")
    if chunk_size <= 0:
        raise DataError(f"chunk_size must be > 0 tiles, got {chunk_size}")
    if slide is not None and len(ids) > 1:
        raise DataError("slide= was given but the table holds several slides; omit slide=")
    model = resolve_encoder(encoder, weights=weights, device=device)
    info = model.info
    if not info.has_image:
        raise ModelError(f"encoder {info.name!r} has no image tower; use an image encoder")
    dev = _device_of(model, device)
    _prepare(model, dev)
    key = embedding_key(info, key_added)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    chunk = D.round_chunk(int(chunk_size), batch_size)
    weights_id = _weights_id(model, weights)
    # -- stain normalisation (issue 15): the target, as recorded and checkpointed ----------
    stain_rec = None
    if stain is None and str(weights_id or "").startswith("local-dir:"):
        from mmpath.pp.stain import folder_stain_target

        stain = folder_stain_target(str(weights_id)[len("local-dir:") :])
        if stain is not None:
            log.info("normalising stain to the %s target the model was trained with", stain.method)
    if stain is not None:
        from mmpath.pp.stain import StainTarget

        stain = stain if isinstance(stain, StainTarget) else StainTarget.from_dict(stain)
        stain_rec = stain.to_dict()

    preprocess: dict[str, Any] = {
        sid: D.slide_preprocess(adata, sid, info.data).describe() for sid in ids
    }
    store = None
    if checkpoint is not None:
        store = ChunkStore(
            checkpoint,
            {
                "key": key,
                "encoder": info.name,
                "weights": weights_id,
                "n_obs": adata.n_obs,
                "pixels": pixels_fingerprint(adata, ids, remap=remap),
                "batch_size": batch_size,
                "chunk_size": chunk,
                "data": asdict(info.data),
                "preprocess": preprocess,
                "params": _param_digest(model),
                "stain": stain_rec,
            },
        )

    n = adata.n_obs
    feats = np.zeros((n, info.embed_dim), np.float32)
    proj = np.zeros((n, info.proj_dim), np.float32) if info.proj_dim else None
    ok = np.ones(n, bool)
    col = np.asarray(adata.obs[K.SLIDE_ID].astype(str)) if n else np.array([])

    def put(rows, f, p, o):
        if f.shape[1] != feats.shape[1]:
            raise ModelError(
                f"encoder {info.name!r} returned {f.shape[1]}-d features but "
                f"declares embed_dim={info.embed_dim}"
            )
        feats[rows] = f
        if p is not None and proj is not None:
            proj[rows] = p
        ok[rows] = o

    n_loaded = 0
    codes, uniq = pd.factorize(col) if n else (np.zeros(0, np.int64), np.array([]))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
    rows_of = {str(u): order[bounds[i] : bounds[i + 1]] for i, u in enumerate(uniq)}
    pos_of = {sid: i for i, sid in enumerate(ids)}
    groups = [[sid] for sid in ids]
    # Many small slides share batches; packed batches carry no per-slide stain normaliser,
    # so a stain target embeds slide by slide (each normalised to it).
    if store is None and slide is None and stain is None and len(ids) > 1:  # pack small slides
        sizes = [(s, len(rows_of[s]), int(_prov.tiling(adata, s)["size"])) for s in ids]
        groups = D.pack_slides(sizes, batch_size, chunk)
    for group in groups:
        if len(group) > 1:
            rows = np.concatenate([rows_of[s] for s in group])
            for idx, f, p, o, desc in D.embed_packed(
                adata[rows], group, model, batch_size, workers, dev, remap
            ):
                put(rows[idx], f, p, o)
                preprocess.update(desc)
            log.info("embedded %d small slides together: %d tiles", len(group), len(rows))
            continue
        sid = group[0]
        pos = pos_of[sid]
        rows = rows_of[sid]
        sub = adata[rows] if len(ids) > 1 else adata
        norm = D.slide_stain(sub, sid, stain, slide=slide, remap=remap)  # None without stain=
        preprocess[sid] = D.slide_preprocess(sub, sid, info.data, stain=norm).describe()
        loaded: set[tuple[int, int]] = set()
        if store is not None:
            for a, b in D.chunk_bounds(len(rows), chunk):
                got = store.load(pos, a, b)
                if got is not None:
                    put(rows[a:b], *got)
                    loaded.add((a, b))
            n_loaded += sum(b - a for a, b in loaded)
        for a, b, f, p, o in _iter_chunks(
            sub,
            model,
            slide=slide,
            batch_size=batch_size,
            num_workers=workers,
            device=dev,
            remap=remap,
            chunk_size=chunk,
            skip=lambda a, b, done=loaded: (a, b) in done,
            stain=norm,
        ):
            put(rows[a:b], f, p, o)
            if store is not None:
                store.save(pos, a, b, f, p, o)
        log.info("embedded slide %r: %d tiles", sid, len(rows))
    if n_loaded:
        log.info("resumed: %d of %d tiles came from checkpoint %s", n_loaded, n, checkpoint)

    adata.obsm[key] = feats
    proj_key = None
    if proj is not None:
        proj_key = f"{key}{K.PROJ_SUFFIX}"
        adata.obsm[proj_key] = proj
    prev = adata.obs[K.TILE_OK].to_numpy(bool) if K.TILE_OK in adata.obs else np.ones(n, bool)
    adata.obs[K.TILE_OK] = prev & ok
    if (~ok).any():
        log.warning(
            "%d tile(s) could not be read; obs[%r] marks them False", (~ok).sum(), K.TILE_OK
        )
    root = _prov.root(adata)
    embeddings = dict(_prov.plain(root.get(K.UNS_EMBEDDINGS, {})))
    embeddings[key] = _jsonable(
        {
            "encoder": info.name,
            "slug": info.slug,
            "kind": info.kind,
            "weights": weights_id,
            "data": asdict(info.data),
            "embed_dim": int(feats.shape[1]),
            "proj_dim": None if proj is None else int(proj.shape[1]),
            "proj_key": proj_key,
            "preprocess": preprocess,
            "n_failed": int((~ok).sum()),
            "stain": stain_rec,
            "mmpath_version": __version__,
            **({"caveat": _caveat(model)} if _caveat(model) else {}),
        }
    )
    root[K.UNS_EMBEDDINGS] = embeddings
