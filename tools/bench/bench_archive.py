"""Benchmark archive runs: local 1 vs 2 workers, Ray and Dask vs local, overhead, memory.

Data: ``--slides`` tiny synthetic pyramidal TIFFs (512 x 384 px at 2 µm/px, ~17 tiles of 64 px
each), the ``tiny_vit`` encoder (random weights, 64-d), batch 16, torch threads per worker at
the default (cores // workers). Every run writes a fresh archive folder from the same slides,
side by side in one process:

* ``local_1`` / ``local_2``: the local engine with 1 and 2 worker processes, each at the
  default threads: on 2 cores, 1 worker with 2 torch threads vs 2 workers with 1 each (what
  a user gets: ``local_2_vs_1_*``);
* ``local_1_t1``: 1 worker with 1 torch thread, the same per-worker resources as each of
  ``local_2``'s (how the engine scales with workers: ``local_2_vs_1_same_threads_*``);
* ``ray_2`` / ``dask_2``: Ray and Dask on a local 2-CPU cluster (2 workers);
* per engine: ``wall_s`` (whole call, cluster and worker start-up, model loads included) and
  ``steady_s`` (first job start to last job finish, from the slides' records: workers load
  their models before their first job), and slides/s on each;
* ``per_slide_overhead_ms``: ``job_ms`` is the median of (job total - its stage timings:
  locks, records, planning inside the job); ``skip_ms`` the cost per slide of a rerun on a
  finished archive (the driver's planning); ``engine_ms`` the local-2 steady time per slide
  minus the median job time / 2 (scheduling and result passing);
* ``thumbnail_ms``: the median time a job spends drawing its slide's thumbnail (off in the
  speed runs, on in the memory runs);
* ``memory``: peak RSS of an in-process run (``workers=0``, a fresh Python each) over N/4 and
  N slides; flat means the ratio stays near 1.

Prints one JSON object. ``--quick`` uses 24 slides; with the default 512 px slides a job takes
~0.1 s and each worker process's start-up (spawn, torch import: seconds) dominates, so give
the workers real work to compare engines: ``--side 1536`` (~150 tiles per slide).

    nice .venv/bin/python tools/bench/bench_archive.py            # 120 slides
    .venv/bin/python tools/bench/bench_archive.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIG = {
    "tiling": {"size": 64, "mpp": 2.0, "min_tissue": 0.5},
    "encoders": ["tiny_vit"],
    "engine": {"batch_size": 16},  # torch threads: cores // workers (the default)
    # Off for the speed runs: the thumbnail is a one-thread matplotlib drawing (~0.3 s) that
    # would dominate these tiny jobs and scale with workers better than the model does. Its
    # cost is measured on its own (per_slide_overhead_ms.thumbnail_ms).
    "thumbnails": False,
}


def make_slides(folder: Path, n: int, side: int = 512) -> Path:
    from mmpath.datasets import default_spec, write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spec = default_spec(side, side * 3 // 4, mpp=2.0, seed=i, levels=(1, 4))
        write_synthetic_slide(folder / f"s{i:04d}.tif", spec, tile_size=128)
    return folder


def timed_run(slides: Path, out: Path, threads: int | None = None, **kw) -> dict:
    import mmpath as mm

    cfg = {**CONFIG, "engine": {**CONFIG["engine"], "torch_threads": threads}}
    t0 = time.perf_counter()
    table = mm.archive.run(slides, out, config=cfg, **kw)
    wall = time.perf_counter() - t0
    st = mm.archive.status(out)
    done = st[st.state == "done"]
    steady = float(done.finished.max() - done.started.min())
    n = len(table)
    return {
        "slides": n,
        "done": int((table.state == "done").sum()),
        "tiles": int(done.n_tiles.sum()),
        "wall_s": round(wall, 3),
        "steady_s": round(steady, 3),
        "slides_per_s_wall": round(n / wall, 3),
        "slides_per_s_steady": round(n / steady, 3) if steady > 0 else None,
        "mean_job_s": round(float(done.seconds.mean()), 4),
        "median_job_s": round(float(done.seconds.median()), 4),
    }


def job_overhead_ms(out: Path) -> float:
    """Median over slides of the job time outside its stages (the first job of each process
    also imports torch there, hence the median)."""
    vals = []
    for p in (out / "slides").glob("*.json"):
        rec = json.loads(p.read_text())
        t = rec.get("timings") or {}
        stages = sum(v for k, v in t.items() if k != "total")
        vals.append(t["total"] - stages)
    return 1e3 * float(np.median(vals))


_MEM = """
import resource, sys, json
import mmpath as mm
mm.archive.run(sys.argv[1], sys.argv[2], config=json.loads(sys.argv[3]), workers=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(slides: Path, out: Path) -> float:
    """Peak RSS of an in-process run (thumbnails on: matplotlib's memory counts too)."""
    cfg = {**CONFIG, "thumbnails": True}
    res = subprocess.run(
        [sys.executable, "-c", _MEM, str(slides), str(out), json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(res.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=120)
    ap.add_argument("--quick", action="store_true", help="24 slides")
    ap.add_argument(
        "--side", type=int, default=512, help="slide width in px (512: ~17 tiles per slide)"
    )
    ap.add_argument("--skip", default="", help="comma-separated engines to skip (ray,dask)")
    args = ap.parse_args()
    n = 24 if args.quick else args.slides
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="bench_archive_", dir=os.environ.get("TMPDIR")))
    t0 = time.perf_counter()
    slides = make_slides(tmp / "slides", n, args.side)
    out: dict = {
        "slides": n,
        "side_px": args.side,
        "make_slides_s": round(time.perf_counter() - t0, 2),
    }
    runs = {}
    runs["local_1"] = timed_run(slides, tmp / "local_1", engine="local", workers=1)
    runs["local_1_t1"] = timed_run(slides, tmp / "local_1_t1", threads=1, workers=1)
    runs["local_2"] = timed_run(slides, tmp / "local_2", engine="local", workers=2)
    for eng in ("ray", "dask"):
        if eng in skip:
            continue
        runs[f"{eng}_2"] = timed_run(slides, tmp / f"{eng}_2", engine=eng, workers=2)
    out["runs"] = runs
    l1, l1t, l2 = runs["local_1"], runs["local_1_t1"], runs["local_2"]
    ratios = {
        "local_2_vs_1_wall": round(l1["wall_s"] / l2["wall_s"], 3),
        "local_2_vs_1_steady": round(l1["steady_s"] / l2["steady_s"], 3),
        "local_2_vs_1_same_threads_wall": round(l1t["wall_s"] / l2["wall_s"], 3),
        "local_2_vs_1_same_threads_steady": round(l1t["steady_s"] / l2["steady_s"], 3),
    }
    out["threads_per_worker"] = {
        "local_1": max(1, os.cpu_count() // 1),
        "local_1_t1": 1,
        "local_2": max(1, os.cpu_count() // 2),
    }
    for eng in ("ray", "dask"):
        if f"{eng}_2" in runs:
            r = runs[f"{eng}_2"]
            ratios[f"{eng}_vs_local_wall"] = round(l2["wall_s"] / r["wall_s"], 3)
            ratios[f"{eng}_vs_local_steady"] = round(l2["steady_s"] / r["steady_s"], 3)
    out["speed_ratios"] = ratios

    import mmpath as mm

    t = time.perf_counter()
    again = mm.archive.run(slides, tmp / "local_2", config=CONFIG, workers=2)
    assert (again.action == "skipped").all()
    out["per_slide_overhead_ms"] = {
        "job_ms": round(job_overhead_ms(tmp / "local_2"), 2),
        "skip_ms": round(1e3 * (time.perf_counter() - t) / n, 2),
        "engine_ms": round(1e3 * (l2["steady_s"] / n - l2["median_job_s"] / 2), 2),
    }
    small = make_slides(tmp / "slides_small", max(4, n // 4), args.side)
    m_small = peak_rss_mb(small, tmp / "mem_small")
    m_full = peak_rss_mb(slides, tmp / "mem_full")
    thumbs = [
        json.loads(p.read_text())["timings"].get("thumbnail")
        for p in (tmp / "mem_full" / "slides").glob("*.json")
    ]
    out["per_slide_overhead_ms"]["thumbnail_ms"] = round(
        1e3 * float(np.median([t for t in thumbs if t is not None])), 1
    )
    out["memory"] = {
        "peak_rss_mb_quarter": round(m_small, 1),
        "peak_rss_mb_full": round(m_full, 1),
        "slides_quarter": max(4, n // 4),
        "ratio_full_vs_quarter": round(m_full / m_small, 3),
    }
    out["cpu_count"] = os.cpu_count()
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
