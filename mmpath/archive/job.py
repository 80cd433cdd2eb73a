"""The per-slide job: open → tissue → tile → embed (one or more encoders) → zero-shot → write.

:func:`run_job` is a pure function of (slide, config): whatever engine calls it, in whatever
process, it computes the same table from the same inputs and writes it atomically to
``tables/<slide_id>.h5ad``, then the slide's record. It only calls the public steps
(:func:`mmpath.io.open_slide`, :func:`mmpath.pp.detect_tissue`, :func:`mmpath.pp.tile`,
:func:`mmpath.io.join_metadata`, :func:`mmpath.tl.embed`, :func:`mmpath.tl.zero_shot`,
:func:`mmpath.io.write_h5ad`). Every failure becomes a ``failed`` record with a one-line
error; nothing is raised to the engine, so one bad slide never stops the others.

Its payload is plain JSON-able data (the task, the resolved config, the archive folder and an
optional staged copy of the slide), so it crosses process and machine boundaries as is.
Encoders are loaded once per process and cached: every engine calls :func:`warm_up` when
it starts a worker (the local pool's initializer, a Ray actor's constructor, a Dask worker
plugin), so a worker loads its models once, before its first slide, and keeps them between
slides. Each record names its worker process and how many encoder loads that process made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.archive import store as S
from mmpath.archive.config import (
    ArchiveConfig,
    EncoderConfig,
    archive_config,
    digest,
    encoder_id,
    encoder_signature,
    tiling_signature,
    zero_shot_signature,
)
from mmpath.archive.inputs import SlideTask
from mmpath.config import to_dict
from mmpath.errors import MmpathError

log = logging.getLogger(__name__)

_ENCODERS: dict[tuple, Any] = {}  # per-process model cache
_LOADS = [0]  # encoder loads made by this process (each record names it)
WORKER_DEVICE: str | None = None  # set by an engine's worker initializer (one GPU each)


@dataclass
class Plan:
    """What a slide needs: ``skip``, ``failed`` (kept failed), ``update`` or ``full``."""

    kind: str
    encoders: list[str] = field(default_factory=list)
    zero_shot: bool = False
    metadata: bool = False


def slide_tiling(task: SlideTask, cfg: ArchiveConfig) -> dict[str, Any]:
    """The tiling signature of one slide (the archive's tiling plus its level-0 mpp)."""
    return {**tiling_signature(cfg), "slide_mpp": task.mpp or cfg.slide_mpp}


def plan_slide(
    store: S.ArchiveStore, task: SlideTask, cfg: ArchiveConfig, prev: dict | None, sig: dict
) -> Plan:
    """Compare a slide's record with this run's input and config (see :mod:`.store`)."""
    same = (
        prev is not None
        and S.same_input(prev.get("input"), sig)
        and prev.get("path") == task.path
        and prev.get("tiling") == slide_tiling(task, cfg)
    )
    if same and prev.get("state") == S.FAILED and not cfg.retry_failed:
        return Plan("failed")
    if not (same and store.is_done(prev)):
        return Plan("full", [encoder_id(e) for e in cfg.encoders], True, True)
    have = prev.get("encoders", {})
    todo = [
        encoder_id(e)
        for e in cfg.encoders
        if have.get(encoder_id(e), {}).get("signature") != encoder_signature(e)
    ]
    zs = (prev.get("zero_shot") or {}).get("signature") != zero_shot_signature(cfg)
    meta = prev.get("metadata_digest") != digest(task.metadata)
    if todo or zs or meta:
        return Plan("update", todo, zs or bool(todo), meta)
    return Plan("skip")


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:400] or "no message"
    if isinstance(err, MmpathError):
        return text
    if isinstance(err, OSError) and err.errno == 28:
        return f"could not write the table ({text}); free disk space, then rerun --retry-failed"
    return f"{type(err).__name__}: {text}"


def get_encoder(enc: EncoderConfig, device: str | None):
    """The encoder, loaded once per process.

    Built under a fixed torch seed: an entry with random (or partly random) weights would
    otherwise differ from process to process, and one archive would mix several models.
    """
    import torch

    from mmpath.tl.embed import resolve_encoder

    key = (enc.name, enc.weights, device)
    if key not in _ENCODERS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _ENCODERS[key] = resolve_encoder(enc.name, weights=enc.weights, device=device)
        _LOADS[0] += 1
    return _ENCODERS[key]


def _run_encoders(cfg: ArchiveConfig) -> list[EncoderConfig]:
    """Every encoder a job of ``cfg`` may load (the embedding ones, then zero-shot's)."""
    encs = list(cfg.encoders)
    zs = cfg.zero_shot
    if zs is not None and zs.classes:
        name = zs.encoder or cfg.encoders[0].name
        if not any(e.name == name for e in encs):
            encs.append(EncoderConfig(name))
    return encs


def warm_up(config: dict[str, Any]) -> None:
    """Prepare a worker process for a run's jobs: torch threads, then every encoder loaded once.

    Engines call it when a worker starts. It never raises: an encoder that cannot load is
    left for the jobs, which record the error per slide.
    """
    try:
        cfg = archive_config(config)
        threads = cfg.engine.torch_threads
        if threads:
            import torch

            torch.set_num_threads(threads)
        from mmpath import io, pp, tl  # noqa: F401 - the job's steps, imported up front

        if cfg.thumbnails:  # matplotlib, imported once per worker
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot  # noqa: F401

        device = cfg.engine.device or WORKER_DEVICE
        for enc in _run_encoders(cfg):
            get_encoder(enc, device)
    except Exception as err:  # noqa: BLE001 - the jobs report it, slide by slide
        log.debug("warm-up failed (%s); the jobs will report it", one_line(err))


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's CPU threads set to ``n`` for one job, restored after (a ``workers=0`` run must
    not change the caller's process)."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Process one slide; returns its record (also written to ``slides/<slide_id>.json``).

    ``payload`` holds ``task`` (a :class:`SlideTask` dict), ``config`` (the resolved
    :class:`ArchiveConfig` dict), ``out`` (the archive folder), ``staged`` (a local copy of
    the slide to read instead of ``task.path``, or None) and ``input`` (the input signature
    of ``task.path`` the driver planned with: size, mtime and the optional sha256 are computed
    once, by the driver, never again here). A slide locked by another live runner returns a
    record with state ``"locked"`` (not written).
    """
    task = SlideTask.from_dict(payload["task"])
    cfg = archive_config(payload["config"])
    store = S.ArchiveStore(payload["out"])
    lock = store.lock(task.slide_id, stale_seconds=cfg.stale_lock_seconds)
    if not lock.acquire():
        holder = lock.holder() or {}
        return {
            "slide_id": task.slide_id,
            "path": task.path,
            "state": "locked",
            "action": "locked",
            "error": f"being processed by another runner (pid {holder.get('pid')} on "
            f"{holder.get('host')})",
        }
    try:
        sig = payload.get("input")
        if sig is None:  # a payload made by hand
            sig = S.input_signature(task.path, with_hash=cfg.hash_inputs)
        with _threads(cfg.engine.torch_threads):
            return _run_locked(task, cfg, store, payload.get("staged"), sig)
    finally:
        lock.release()


def _run_locked(
    task: SlideTask, cfg: ArchiveConfig, store: S.ArchiveStore, staged, sig: dict
) -> dict:
    t0 = time.perf_counter()
    prev = store.read_record(task.slide_id)
    plan = plan_slide(store, task, cfg, prev, sig)
    if plan.kind in ("skip", "failed"):  # another runner finished it since we planned
        return {**prev, "action": "skipped"}
    rec: dict[str, Any] = {
        **(prev if plan.kind == "update" else {}),
        "slide_id": task.slide_id,
        "path": task.path,
        "state": S.RUNNING,
        "error": None,
        "input": sig,
        "mpp_override": task.mpp or cfg.slide_mpp,
        "tiling": slide_tiling(task, cfg),
        "metadata_digest": digest(task.metadata),
        "config": to_dict(cfg),
        "mmpath_version": __version__,
        "host": S.HOST,
        "pid": os.getpid(),
        "encoder_loads_at_start": _LOADS[0],  # 1+ when the worker's warm-up loaded them
        "started": time.time(),
        "table": os.path.join("tables", f"{task.slide_id}.h5ad"),
    }
    rec.setdefault("encoders", {})
    timings: dict[str, float] = {}
    rec["timings"] = timings
    store.write_record(rec)
    slide = None
    try:
        slide, adata, tissue = _tiles(task, cfg, store, plan, staged, timings)
        if plan.metadata and task.metadata:
            from mmpath import io

            row = pd.DataFrame([{K.SLIDE_ID: task.slide_id, **task.metadata}])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # an update replaces the columns
                io.join_metadata(adata, row, columns=list(task.metadata))
        _embed(adata, slide, cfg, plan, rec, timings)
        if plan.zero_shot:
            _zero_shot(adata, slide, cfg, rec, timings)
        t = time.perf_counter()
        from mmpath import io

        table = store.table_path(task.slide_id)
        io.write_h5ad(adata, table)
        timings["write"] = time.perf_counter() - t
        rec.update(state=S.DONE, n_tiles=int(adata.n_obs), table_bytes=table.stat().st_size)
        if cfg.thumbnails and (plan.kind == "full" or not store.thumb_path(task.slide_id).exists()):
            _thumbnail(adata, slide, tissue, store, task.slide_id, rec, timings)
    except Exception as err:  # noqa: BLE001 - every failure is recorded, never raised
        log.debug("slide %s failed", task.slide_id, exc_info=True)
        rec.update(state=S.FAILED, error=one_line(err))
    finally:
        if slide is not None:
            slide.close()
    timings["total"] = time.perf_counter() - t0
    rec["finished"] = time.time()
    rec["encoder_loads"] = _LOADS[0]  # loads this worker process made so far
    try:
        store.write_record(rec)
    except OSError as err:  # e.g. the disk is full: the record stays "running" (redone)
        log.error("cannot write the record of %s: %s", task.slide_id, err)
    return {**rec, "action": "ran"}


def _tiles(task, cfg, store, plan, staged, timings):
    from mmpath import io, pp
    from mmpath.io import _prov

    t = time.perf_counter()
    slide = io.open_slide(
        staged or task.path, mpp=task.mpp or cfg.slide_mpp, slide_id=task.slide_id
    )
    timings["open"] = time.perf_counter() - t
    if plan.kind == "update":
        return slide, io.read_h5ad(store.table_path(task.slide_id)), None
    t = time.perf_counter()
    tissue = pp.detect_tissue(slide, mpp=cfg.tiling.tissue_mpp)
    timings["tissue"] = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an empty slide is recorded (n_tiles 0)
        tiles = pp.tile(
            slide,
            cfg.tiling.size,
            mpp=cfg.tiling.mpp,
            level=cfg.tiling.level,
            overlap=cfg.tiling.overlap,
            min_tissue=cfg.tiling.min_tissue,
            tissue=tissue,
        )
    if staged:  # the table names the slide where it lives, not the staging copy
        rec = _prov.slide_record(tiles, task.slide_id)
        _prov.set_slide_record(tiles, task.slide_id, {**rec, "path": task.path})
    timings["tile"] = time.perf_counter() - t
    return slide, tiles, tissue


def _thumbnail(adata, slide, tissue, store, slide_id: str, rec: dict, timings: dict) -> None:
    """Draw the slide's tile grid; a picture that cannot be drawn never fails the slide."""
    from mmpath.archive.pictures import draw_thumbnail

    t = time.perf_counter()
    try:
        draw_thumbnail(adata, slide, tissue, store.thumb_path(slide_id))
        rec["thumbnail"] = os.path.join("thumbs", f"{slide_id}.jpg")
    except Exception as err:  # noqa: BLE001 - the table is done; the picture is a bonus
        log.warning("no thumbnail for %s: %s", slide_id, one_line(err))
        rec["thumbnail"] = None
    timings["thumbnail"] = time.perf_counter() - t


def _embed(adata, slide, cfg: ArchiveConfig, plan: Plan, rec: dict, timings: dict) -> None:
    from mmpath import tl
    from mmpath.tl.embed import _param_digest, embedding_key

    device = cfg.engine.device or WORKER_DEVICE
    for enc in cfg.encoders:
        eid = encoder_id(enc)
        if eid not in plan.encoders:
            continue
        t = time.perf_counter()
        model = get_encoder(enc, device)
        tl.embed(
            adata,
            model,
            slide=slide,
            batch_size=cfg.engine.batch_size,
            num_workers=cfg.engine.reader_workers,
            device=device,
            key_added=enc.key_added,
        )
        key = embedding_key(model.info, enc.key_added)
        if enc.weights is not None:  # record the weights as the user named them
            from mmpath.io import _prov

            _prov.root(adata)[K.UNS_EMBEDDINGS][key]["weights"] = enc.weights
        timings[f"embed:{eid}"] = time.perf_counter() - t
        rec["encoders"][eid] = {
            "key": key,
            "encoder": model.info.name,
            "weights": enc.weights,
            "weights_fingerprint": _param_digest(model),
            "signature": encoder_signature(enc),
        }


def _zero_shot(adata, slide, cfg: ArchiveConfig, rec: dict, timings: dict) -> None:
    sig = zero_shot_signature(cfg)
    if sig is None:
        rec["zero_shot"] = None
        return
    from mmpath import tl

    zs = cfg.zero_shot
    name = zs.encoder or cfg.encoders[0].name
    enc = next((e for e in cfg.encoders if e.name == name), EncoderConfig(name))
    t = time.perf_counter()
    slides = tl.zero_shot(
        adata,
        list(zs.classes),
        get_encoder(enc, cfg.engine.device or WORKER_DEVICE),
        templates=list(zs.templates) if zs.templates else None,
        key_added=zs.key_added,
        slide=slide,
    )
    timings["zero_shot"] = time.perf_counter() - t
    label = None
    probs = {}
    if slides.n_obs:
        label = slides.obs[zs.key_added].astype(str).iloc[0]
        probs = {str(c): float(v) for c, v in zip(slides.var_names, slides.X[0])}
    rec["zero_shot"] = {"signature": sig, "label": label, "probabilities": probs}
