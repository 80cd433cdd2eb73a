"""The archive driver: plan which slides need work, hand them to an engine, record the results.

The driver never computes a table itself; it compares each slide's record with this run's
input (size + mtime, optionally sha256) and config (:func:`~mmpath.archive.job.plan_slide`),
hands the slides that need work to an engine, and consolidates the records into
``manifest.jsonl``. A slide is redone when it is new, unfinished (pending, running with a
dead owner, interrupted), its file changed, or its table is missing or not whole; failed
slides stay failed until ``retry_failed=True`` (or their file changes).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mmpath.archive import store as S
from mmpath.archive.config import (
    ArchiveConfig,
    archive_config,
    load_archive_config,
    resolved,
    tiling_signature,
    with_overrides,
)
from mmpath.archive.engines import cuda_count, default_workers, preflight, run_engine
from mmpath.archive.inputs import SlideTask, resolve_inputs
from mmpath.archive.job import plan_slide
from mmpath.config import save_config, to_dict
from mmpath.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["run", "status"]

COLUMNS = ["slide_id", "state", "action", "n_tiles", "seconds", "error", "path"]
MANIFEST_EVERY = 30.0  # seconds between manifest refreshes during a run


def _config(
    config: ArchiveConfig | str | os.PathLike[str] | Mapping | None, parts: Mapping[str, Any]
) -> ArchiveConfig:
    if config is None:
        cfg = ArchiveConfig()
    elif isinstance(config, ArchiveConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = archive_config(config)
    else:
        cfg = load_archive_config(config)
    return with_overrides(cfg, parts)


def _encoders_arg(encoder, weights) -> list[dict[str, Any]] | None:
    if encoder is None:
        if weights is not None:
            raise ConfigError("weights= needs encoder= (or encoders in the config)")
        return None
    names = [encoder] if isinstance(encoder, str) else list(encoder)
    if weights is not None and len(names) != 1:
        raise ConfigError("weights= applies to one encoder; list weights per encoder in a config")
    return [{"name": n, "weights": weights} for n in names]


def run(
    slides: Any,
    out: str | os.PathLike[str],
    *,
    config: ArchiveConfig | str | os.PathLike[str] | Mapping | None = None,
    encoder: str | Sequence[str] | None = None,
    weights: str | None = None,
    mpp: float | None = None,
    size: int | None = None,
    slide_mpp: float | None = None,
    engine: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    retry_failed: bool | None = None,
    overwrite: bool = False,
    stage_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Tile and embed every slide of an archive, resumably; returns the run's status table.

    Parameters
    ----------
    slides
        A folder (recursive), a glob, a CSV/DataFrame with ``path`` (and optional
        ``slide_id``, ``mpp`` and metadata columns), a slide file, or a list of these.
    out
        The archive folder (created; a rerun into it resumes).
    config
        An :class:`ArchiveConfig`, a YAML path (``configs/archive.yaml``) or a mapping; the
        keyword arguments below override it.
    encoder, weights
        Encoder name(s) (see ``mmpath list``) and the weights of a single encoder.
    mpp, size
        Target µm/px and side (px) of the tiles.
    slide_mpp
        Level-0 µm/px of every slide (a CSV ``mpp`` column overrides it per slide).
    engine, address, workers
        ``"local"`` (default), ``"ray"`` or ``"dask"``; a cluster address; model processes.
    retry_failed
        Also redo slides that failed before (otherwise they keep their error).
    overwrite
        Accept a tiling other than the archive's (redoes every slide); otherwise refused.
    stage_dir
        Copy slides to this local folder ahead of the workers (``staging.max_gb`` bounds it).
    progress
        Show a progress bar over slides (with ETA) on stderr.

    Returns
    -------
    A DataFrame, one row per input slide: ``slide_id``, ``state`` (done, failed,
    interrupted, locked...), ``action`` (``ran``, ``skipped``, ``kept failed``), ``n_tiles``,
    ``seconds``, ``error`` and ``path``.

    Example
    -------
    >>> table = mm.archive.run("slides/", "archive/", encoder="tiny_vit", mpp=1.0, size=112)
    >>> (table.state == "done").all()
    """
    parts = {
        "tiling.size": size,
        "tiling.mpp": mpp,
        "slide_mpp": slide_mpp,
        "engine.name": engine,
        "engine.address": address,
        "engine.workers": workers,
        "retry_failed": retry_failed,
        "staging.dir": None if stage_dir is None else str(stage_dir),
        "encoders": _encoders_arg(encoder, weights),
    }
    cfg = _config(config, parts)
    tasks = resolve_inputs(slides)
    preflight(cfg.engine.name, cfg.engine.address, cfg.engine.connect_timeout)
    store = S.ArchiveStore(out)
    store.make_dirs()
    store.check_tiling(tiling_signature(cfg), overwrite=overwrite)
    n_workers = cfg.engine.workers if cfg.engine.workers is not None else default_workers()
    threads = cfg.engine.torch_threads or max(1, (os.cpu_count() or 1) // max(1, n_workers))
    readers = cfg.engine.reader_workers
    if readers is None:  # keep GPUs fed: spare cores decode; on the CPU the worker decodes
        spare = (os.cpu_count() or 1) - n_workers
        readers = min(8, max(1, spare // max(1, n_workers))) if cuda_count() else 0
    cfg = resolved(cfg, workers=n_workers, torch_threads=threads, reader_workers=readers)
    save_config(cfg, store.root / "config.yaml")

    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[SlideTask, dict]] = []
    for task in tasks:
        prev = store.read_record(task.slide_id)
        # computed once, here: the job records this signature (it never re-reads the file)
        sig = S.input_signature(task.path, with_hash=cfg.hash_inputs)
        plan = plan_slide(store, task, cfg, prev, sig)
        if plan.kind in ("skip", "failed"):
            action = "skipped" if plan.kind == "skip" else "kept failed"
            rows[task.slide_id] = _row({**prev, "action": action})
            continue
        todo.append((task, sig))
        store.create_record({"slide_id": task.slide_id, "path": task.path, "state": S.PENDING})
    log.info(
        "archive %s: %d slide(s), %d to process on engine %r with %d worker(s)",
        store.root, len(tasks), len(todo), cfg.engine.name, n_workers,
    )  # fmt: skip

    cfg_dict = to_dict(cfg)
    payloads: Iterator[dict] = (
        {
            "task": t.to_dict(),
            "config": cfg_dict,
            "out": str(store.root),
            "staged": None,
            "input": sig,
        }
        for t, sig in todo
    )
    stager = None
    if cfg.staging.dir:
        from mmpath.archive.staging import Stager

        stager = Stager(cfg.staging.dir, max_gb=cfg.staging.max_gb, ahead=cfg.staging.ahead)
        payloads = stager.stage(payloads)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="slides", unit="slide", file=sys.stderr)
    last = time.monotonic()
    try:
        results = run_engine(
            cfg.engine.name,
            payloads,
            workers=n_workers,
            address=cfg.engine.address,
            timeout=cfg.engine.connect_timeout,
            config=cfg_dict,
        )
        for rec in results:
            rows[rec["slide_id"]] = _row(rec)
            if stager is not None:
                stager.release(rec["slide_id"])
            if rec.get("state") == S.FAILED:
                log.warning("slide %s failed: %s", rec["slide_id"], rec.get("error"))
            if bar is not None:
                bar.update(1)
            if time.monotonic() - last > MANIFEST_EVERY:
                store.write_manifest(list(store.records()))
                last = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        if stager is not None:
            stager.close()
        store.write_manifest(list(store.records()))
    table = pd.DataFrame([rows[t.slide_id] for t in tasks if t.slide_id in rows], columns=COLUMNS)
    return table.reset_index(drop=True)


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    timings = rec.get("timings") or {}
    return {
        "slide_id": rec.get("slide_id"),
        "state": rec.get("state"),
        "action": rec.get("action"),
        "n_tiles": rec.get("n_tiles"),
        "seconds": timings.get("total"),
        "error": rec.get("error"),
        "path": rec.get("path"),
    }


STATUS_COLUMNS = ["slide_id", "state", "n_tiles", "seconds", "encoders", "error", "path"]


def status(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-slide state of an archive: done, failed (why), interrupted, running, pending.

    A record that says ``done`` while its table is missing or not whole shows as
    ``pending``; a ``running`` record whose owner is gone shows as ``interrupted``.

    Parameters
    ----------
    folder
        The archive folder.

    Returns
    -------
    A DataFrame with ``slide_id``, ``state``, ``n_tiles``, ``seconds``, ``encoders`` (comma
    separated obsm keys), ``error`` and ``path``.

    Example
    -------
    >>> mm.archive.status("archive/").state.value_counts()
    """
    store = S.ArchiveStore(folder).require()
    rows = []
    for rec in store.records():
        state, error = rec.get("state"), rec.get("error")
        if state == S.DONE and not store.is_done(rec):
            state, error = S.PENDING, "its table is missing or incomplete; rerun to redo it"
        elif state == S.RUNNING:
            lock = store.lock(rec["slide_id"], stale_seconds=_stale(rec))
            if lock.holder() is None or lock.is_stale():
                state, error = S.INTERRUPTED, "its run stopped mid-slide; rerun to redo it"
        keys = sorted(e.get("key", "") for e in (rec.get("encoders") or {}).values())
        rows.append(
            {
                "slide_id": rec.get("slide_id"),
                "state": state,
                "n_tiles": rec.get("n_tiles"),
                "seconds": (rec.get("timings") or {}).get("total"),
                "encoders": ",".join(keys),
                "error": error,
                "path": rec.get("path"),
                "started": rec.get("started"),
                "finished": rec.get("finished"),
            }
        )
    df = pd.DataFrame(rows, columns=[*STATUS_COLUMNS, "started", "finished"])
    return df


def _stale(rec: dict[str, Any]) -> float:
    return float((rec.get("config") or {}).get("stale_lock_seconds", 600.0))


def status_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Counts, tiles, throughput and ETA of a status table (for the CLI and summary.md)."""
    counts = {s: int((df.state == s).sum()) for s in S.STATES if (df.state == s).any()}
    done = df[df.state == S.DONE]
    tiles = int(done.n_tiles.fillna(0).sum())
    busy = float(done.seconds.fillna(0).sum())
    span = None
    if len(done) and done.started.notna().any():
        span = float(done.finished.max() - done.started.min())
    per_slide = busy / len(done) if len(done) else None
    left = int(df.state.isin([S.PENDING, S.INTERRUPTED, S.RUNNING]).sum())
    rate = len(done) / span if span else None
    return {
        "slides": len(df),
        "counts": counts,
        "tiles": tiles,
        "tiles_per_s": tiles / span if span else None,
        "seconds_per_slide": per_slide,
        "wall_seconds": span,
        "eta_seconds": left / rate if rate and left else (0.0 if not left else None),
    }


def write_summary(folder: str | os.PathLike[str], df: pd.DataFrame | None = None) -> Path:
    """Write ``<folder>/summary.md``: counts, failures with errors, throughput, versions, and
    a contact sheet of the done slides' thumbnails (``contact_sheet.jpg``)."""
    from mmpath.archive.pictures import contact_sheet
    from mmpath.archive.report import summary_markdown
    from mmpath.io._atomic import atomic_write_text

    store = S.ArchiveStore(folder).require()
    df = status(folder) if df is None else df
    sheet = contact_sheet(store, df)
    path = store.root / "summary.md"
    atomic_write_text(path, summary_markdown(store, df, status_summary(df), sheet=sheet))
    store.write_manifest(list(store.records()))
    return path
