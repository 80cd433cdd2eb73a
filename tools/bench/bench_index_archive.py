"""Benchmark indexing an archive: parallel IVF blocks merged on disk vs one in-memory build.

Data: ``--n`` synthetic clustered vectors (the Gaussian mixture of ``bench_index.py``) written
as per-slide tile tables (``--per-slide`` tiles each, ``.h5ad``), like an archive folder.
Both builds use the same factory (``IVF<~sqrt n>,Flat``) and seed, each in a fresh process:

* ``in_memory``: read every table (``mm.io.read_h5ad``), then one ``mm.index.build(tables)``
  (faiss uses all cores);
* ``on_disk``: ``mm.index.build(paths, workers=W, out=...)``: tables read one at a time,
  blocks added in W worker processes, merged into an on-disk ``.ivfdata``.

Reported: build wall time and their ratio (and CPU seconds, since a shared machine stretches
wall time), peak private memory (``RssAnon`` of the process plus its workers, sampled every
50 ms: what the build really needs) and peak RSS (``getrusage``; it also counts pages of the
memory-mapped lists and, for forked workers, the parent's pages they share), index size on
disk, and 10-recall@10 of both against exact ground truth on a query sample (computed table
by table), at the default nprobe and at nprobe 2 (where recall is below 1). The on-disk
index is then changed as a user would: one more slide added (``mm.index.add``, timed against
the build), ~10% of the slides and the added one removed (``mm.index.remove``: tombstones; the
added slide's segment is dropped whole), and searched again:
time against the search without tombstones, recall against exact search over the remaining
slides. Prints one JSON object; ``--quick`` shrinks the data.

    nice .venv/bin/python tools/bench/bench_index_archive.py             # 10^6 x 384
    .venv/bin/python tools/bench/bench_index_archive.py --quick          # 2 x 10^5 x 384
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REP = "X_bench"

CHILD = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
import numpy as np
import mmpath as mm

PEAK = {"anon": 0}

def anon_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0

def sample():  # private memory of this process and its workers (mmapped lists excluded)
    try:
        import psutil
        me = psutil.Process()
        kids = lambda: [c.pid for c in me.children(recursive=True)]
    except ImportError:
        kids = lambda: []
    while True:
        PEAK["anon"] = max(PEAK["anon"], anon_mb(os.getpid()) + sum(map(anon_mb, kids())))
        time.sleep(0.05)

threading.Thread(target=sample, daemon=True).start()
cfg = json.loads(sys.argv[1])
paths = [Path(p) for p in cfg["paths"]]
t0 = time.perf_counter()
if cfg["mode"] == "in_memory":
    tables = [mm.io.read_h5ad(p) for p in paths]
    idx = mm.index.build(tables, use_rep=cfg["rep"], factory=cfg["factory"])
    del tables
    idx.save(cfg["out"])
else:
    idx = mm.index.build(paths, use_rep=cfg["rep"], factory=cfg["factory"],
                         workers=cfg["workers"], out=cfg["out"])
build_s = time.perf_counter() - t0
q = np.load(cfg["queries"])
t1 = time.perf_counter()
_, nbr = idx.search_vectors(q, 10)
search_s = time.perf_counter() - t1
np.save(cfg["found"], nbr)
_, nbr2 = idx.search_vectors(q, 10, params={"nprobe": 2})
np.save(cfg["found"].replace(".npy", "-np2.npy"), nbr2)
me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
self_kb, kids_kb = me.ru_maxrss, kids.ru_maxrss
cpu_s = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
size = sum(p.stat().st_size for p in Path(cfg["out"]).iterdir())
res = {"build_s": build_s, "cpu_s": cpu_s, "search_s": search_s,
       "peak_private_mb_total": PEAK["anon"], "peak_rss_mb": self_kb / 1024,
       "peak_rss_workers_mb": kids_kb / 1024, "index_mb": size / 2**20,
       "on_disk": idx.on_disk, "n": len(idx), "nprobe": idx.params.get("nprobe")}
if cfg.get("extra"):  # changing the saved index: add one slide, remove some, search again
    del idx
    t = time.perf_counter()
    mm.index.add(cfg["out"], [cfg["extra"]])
    res["add_one_slide_s"] = time.perf_counter() - t
    idx = mm.index.load(cfg["out"], verify=False)
    idx.search_vectors(q[:50], 10)  # warm pages: both timed searches below are warm
    t = time.perf_counter()
    idx.search_vectors(q, 10)
    res["search_warm_s"] = time.perf_counter() - t
    del idx
    t = time.perf_counter()
    idx = mm.index.remove(cfg["out"], cfg["remove"])
    res["remove_slides_s"] = time.perf_counter() - t
    res["n_after_remove"] = len(idx)
    idx.search_vectors(q[:50], 10)
    t = time.perf_counter()
    _, nbr3 = idx.search_vectors(q, 10)
    res["search_with_tombstones_s"] = time.perf_counter() - t
    np.save(cfg["found"].replace(".npy", "-rm.npy"), nbr3)
print(json.dumps(res))
"""


def write_archive(root: Path, n: int, dim: int, per: int, clusters: int, seed: int, reuse=False):
    """Per-slide tile tables of mixture vectors, written one at a time; returns their paths."""
    import anndata as ad
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from bench_index import mixture

    import mmpath as mm

    _, centres, bases = mixture(1, dim, clusters, 32, seed)
    paths = []
    for s, start in enumerate(range(0, n, per)):
        m = min(per, n - start)
        x, _, _ = mixture(m, dim, clusters, 32, seed + 1 + s, centres, bases)
        sid = f"slide{s:05d}"
        side = int(np.ceil(np.sqrt(m)))
        obs = pd.DataFrame(
            {
                "slide_id": pd.Categorical([sid] * m),
                "x": (np.arange(m) % side) * 224,
                "y": (np.arange(m) // side) * 224,
                "label": np.asarray(["tumour", "stroma", "normal"])[np.arange(m) % 3],
            },
            index=[f"{sid}:{i}" for i in range(m)],
        )
        t = ad.AnnData(obs=obs)
        t.obsm[REP] = x
        t.uns["mmpath"] = {
            "slides": {sid: {"path": None, "mpp": 0.5}},
            "embeddings": {REP: {"encoder": "bench"}},
        }
        p = root / "tables" / f"{sid}.h5ad"
        p.parent.mkdir(parents=True, exist_ok=True)
        if not (reuse and p.is_file()):
            mm.io.write_h5ad(t, p)
        paths.append(p)
    return paths, centres, bases


def extra_table(work: Path, like: Path) -> Path:
    """One more slide (a copy of ``like`` under a new slide id), for the add measurement."""
    import mmpath as mm

    t = mm.io.read_h5ad(like)
    sid = "extra00000"
    t.obs["slide_id"] = sid
    t.obs_names = [f"{sid}:{i}" for i in range(t.n_obs)]
    t.uns["mmpath"]["slides"] = {sid: {"path": None, "mpp": 0.5}}
    out = work / "extra" / f"{sid}.h5ad"
    out.parent.mkdir(exist_ok=True)
    mm.io.write_h5ad(t, out)
    return out


def ground_truth(paths, q: np.ndarray, k: int = 10, skip=()) -> np.ndarray:
    """Exact top-k ids, table by table (ids run in table order, as the builds hand them out);
    tables in ``skip`` (removed slides) keep their ids but are not searched."""
    import faiss

    from mmpath.index._source import read_table

    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    start = 0
    for p in paths:
        x = np.ascontiguousarray(read_table(p, REP).obsm[REP], np.float32)
        if p in skip:
            start += len(x)
            continue
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        D = q @ x.T
        top = np.argsort(-D, axis=1)[:, :k]
        heap.add_result(np.take_along_axis(D, top, 1), (top + start).astype(np.int64))
        start += len(x)
    heap.finalize()
    return heap.I


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def run(mode: str, paths, factory: str, workers: int, work: Path, queries: Path, change=None):
    out = work / f"{mode}.idx"
    found = work / f"{mode}.npy"
    cfg = {
        "mode": mode,
        "paths": [str(p) for p in paths],
        "rep": REP,
        "factory": factory,
        "workers": workers,
        "out": str(out),
        "queries": str(queries),
        "found": str(found),
        **(change or {}),
    }
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    r = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"{mode} build failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["found"] = np.load(found)
    res["found_np2"] = np.load(str(found).replace(".npy", "-np2.npy"))
    if change:
        res["found_rm"] = np.load(str(found).replace(".npy", "-rm.npy"))
    shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--per-slide", type=int, default=10_000)
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="200,000 vectors")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="keep tables already in --dir")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries = 200_000, 300
    sys.path.insert(0, str(HERE.parents[1]))
    from mmpath.index._faiss import nlist_for

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-index-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths, centres, bases = write_archive(
            work, args.n, args.dim, args.per_slide, args.clusters, args.seed, args.reuse
        )
        write_s = time.perf_counter() - t0
        sys.path.insert(0, str(HERE))
        from bench_index import mixture

        q, _, _ = mixture(args.queries, args.dim, args.clusters, 32, args.seed + 7, centres, bases)
        np.save(work / "queries.npy", q)
        truth = ground_truth(paths, q)
        factory = f"IVF{nlist_for(args.n)},Flat"
        gone = paths[:: max(1, len(paths) // 10)][: max(1, len(paths) // 10)]  # ~10% of slides
        change = {
            "extra": str(extra_table(work, paths[0])),
            "remove": [p.stem for p in gone] + ["extra00000"],  # the added copy too
        }
        ram = run("in_memory", paths, factory, 1, work, work / "queries.npy")
        disk = run("on_disk", paths, factory, args.workers, work, work / "queries.npy", change)
        r_ram, r_disk = recall(ram.pop("found"), truth), recall(disk.pop("found"), truth)
        r2_ram, r2_disk = recall(ram.pop("found_np2"), truth), recall(disk.pop("found_np2"), truth)
        # after removing slides (and the added copy, whose segment is dropped whole): exact
        # truth over the remaining slides
        truth_rm = ground_truth(paths, q, skip=set(gone))
        r_rm = recall(disk.pop("found_rm"), truth_rm)
        out = {
            "n": args.n,
            "dim": args.dim,
            "tables": len(paths),
            "factory": factory,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "queries": args.queries,
            "write_tables_s": round(write_s, 1),
            "in_memory": {
                **ram,
                "recall@10": round(r_ram, 4),
                "recall@10_nprobe2": round(r2_ram, 4),
            },
            "on_disk": {
                **disk,
                "recall@10": round(r_disk, 4),
                "recall@10_nprobe2": round(r2_disk, 4),
            },
            "build_time_ratio_in_memory_over_on_disk": round(ram["build_s"] / disk["build_s"], 3),
            "recall@10_difference": round(abs(r_ram - r_disk), 4),
            "removed_slides": len(gone),
            "on_disk_recall@10_after_remove_vs_exact_rest": round(r_rm, 4),
            "search_time_ratio_tombstones_over_none": round(
                disk["search_with_tombstones_s"] / disk["search_warm_s"], 3
            ),
            "add_one_slide_over_build_time": round(disk["add_one_slide_s"] / disk["build_s"], 4),
            "recall@10_nprobe2_difference": round(abs(r2_ram - r2_disk), 4),
            "peak_private_memory_ratio_on_disk_over_in_memory": round(
                disk["peak_private_mb_total"] / ram["peak_private_mb_total"], 3
            ),
            "peak_rss_ratio_on_disk_over_in_memory": round(
                max(disk["peak_rss_mb"], disk["peak_rss_workers_mb"]) / ram["peak_rss_mb"], 3
            ),
        }
        for part in (out["in_memory"], out["on_disk"]):
            for key, v in part.items():
                if isinstance(v, float):
                    part[key] = round(v, 2)
        print(json.dumps(out, indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
