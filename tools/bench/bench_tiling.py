#!/usr/bin/env python
"""Tiling benchmark: mmpath tiling + reading vs a plain openslide loop, workers, tissue, memory.

Prints one JSON object. Every ratio is measured side by side in this one process (memory in
child processes), on a generated multi-level JPEG pyramid cached under
``~/.cache/mmpath/bench/`` (written once).

Targets (issue 2):

* ``read.ratio`` (mmpath tile + read every tile / plain openslide ``read_region`` loop over
  the same coordinates and level, in tiles/s) >= 0.9;
* ``workers.speedup`` (``iter_tiles`` with 2 reader workers / 1 worker) >= 1.6;
* ``tissue.fraction_of_read`` (tissue detection time / time to read the tiles it selects)
  <= 0.05;
* ``memory.rss_growth`` (peak RSS reading 4N tiles / reading N tiles - 1) close to 0.

Usage::

    python tools/bench/bench_tiling.py            # 20,000 x 20,000 px, ~1 min after caching
    python tools/bench/bench_tiling.py --quick    # 6,000 x 6,000 px, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def bench_slide(size: int, cache: Path) -> Path:
    """The cached synthetic pyramid of ``size`` x ``size`` px (levels 1/4/16, JPEG)."""
    from mmpath.datasets import default_spec, write_synthetic_slide

    path = cache / f"synthetic_{size}_jpeg.tif"
    if not path.exists():
        spec = default_spec(size, size, mpp=0.5, levels=(1, 4, 16))
        t0 = time.perf_counter()
        write_synthetic_slide(path, spec, tile_size=256, compression="jpeg", quality=90)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return path


def openslide_loop(path: Path, xy: np.ndarray, level: int, size: int) -> float:
    """Seconds for the plain loop a user would write: read_region + RGB array per tile."""
    import openslide

    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(path))
    for x, y in xy:
        img = osr.read_region((int(x), int(y)), level, (size, size)).convert("RGB")
        np.asarray(img)
    osr.close()
    return time.perf_counter() - t0


def mmpath_tile_and_read(path: Path, tile_kw: dict, tissue) -> tuple[float, int]:
    """Seconds for mm.pp.tile (given the tissue mask) + reading every tile in this process."""
    import mmpath as mm

    t0 = time.perf_counter()
    slide = mm.io.open_slide(path)
    tiles = mm.pp.tile(slide, tissue=tissue, **tile_kw)
    n = 0
    for _, batch in mm.io.iter_tiles(tiles, batch_size=64, slide=slide):
        n += len(batch)
    slide.close()
    return time.perf_counter() - t0, n


def workers_read(tiles, num_workers: int) -> float:
    import mmpath as mm

    t0 = time.perf_counter()
    n = 0
    for _, batch in mm.io.iter_tiles(tiles, batch_size=32, num_workers=num_workers):
        n += len(batch)
    assert n == tiles.n_obs
    return time.perf_counter() - t0


def child_peak_rss(path: Path, tile_kw: dict, n_tiles: int) -> int:
    """Peak RSS (bytes) of a fresh process that tiles the slide and streams ``n_tiles``."""
    code = f"""
import resource, json, mmpath as mm
slide = mm.io.open_slide({str(path)!r})
tiles = mm.pp.tile(slide, **{tile_kw!r})[:{n_tiles}]
n = 0
for _, batch in mm.io.iter_tiles(tiles, batch_size=64, slide=slide):
    n += len(batch)
print(json.dumps({{"n": n, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["n"] == n_tiles, rec
    return int(rec["maxrss_kb"]) * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="slide side in px")
    parser.add_argument("--quick", action="store_true", help="6,000 px slide, one repeat")
    parser.add_argument("--tile", type=int, default=256, help="tile side in px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cache", type=Path, default=Path("~/.cache/mmpath/bench").expanduser()
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size = min(args.size, 6_000)
        args.repeats = 1

    import mmpath as mm

    path = bench_slide(args.size, args.cache)
    tile_kw = {"size": args.tile, "mpp": 0.5, "min_tissue": 0.5}

    # Tissue detection, then the table whose tiles everything below reads.
    slide = mm.io.open_slide(path)
    detect_s = []
    for _ in range(max(args.repeats, 3)):
        t0 = time.perf_counter()
        tissue = mm.pp.detect_tissue(slide)
        detect_s.append(time.perf_counter() - t0)
    tiles = mm.pp.tile(slide, tissue=tissue, **tile_kw)
    spec = mm.io._prov.tiling(tiles, slide.slide_id)
    xy = np.stack([tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()], axis=1)
    slide.close()
    n = len(xy)

    # (a) same process, same coordinates and level, alternating to share cache effects.
    openslide_loop(path, xy[: min(n, 200)], spec["level"], spec["read_size"])  # warm up
    ref_s, ours_s = [], []
    for _ in range(args.repeats):
        ref_s.append(openslide_loop(path, xy, spec["level"], spec["read_size"]))
        t, got = mmpath_tile_and_read(path, tile_kw, tissue)
        assert got == n
        ours_s.append(t)
    ref, ours = min(ref_s), min(ours_s)

    # (b) reader processes.
    one_s, two_s = [], []
    for _ in range(args.repeats):
        one_s.append(workers_read(tiles, 1))
        two_s.append(workers_read(tiles, 2))
    one, two = min(one_s), min(two_s)

    # (d) memory: N vs 4N tiles streamed, each in a fresh process.
    n_small = max(1, n // 4)
    rss_small = child_peak_rss(path, tile_kw, n_small)
    rss_large = child_peak_rss(path, tile_kw, 4 * n_small)

    detect = statistics.median(detect_s)
    result = {
        "bench": "tiling",
        "slide": {"size": args.size, "levels": [1, 4, 16], "compression": "jpeg",
                  "tile": args.tile, "mpp": 0.5, "n_tiles": n, "level": spec["level"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "repeats": args.repeats,
        "read": {
            "openslide_tiles_per_s": round(n / ref, 1),
            "mmpath_tiles_per_s": round(n / ours, 1),
            "ratio": round(ref / ours, 3),
            "target": 0.9,
        },
        "workers": {
            "one_worker_tiles_per_s": round(n / one, 1),
            "two_workers_tiles_per_s": round(n / two, 1),
            "speedup": round(one / two, 3),
            "target": 1.6,
        },
        "tissue": {
            "detect_s": round(detect, 4),
            "read_selected_s": round(ours, 3),
            "fraction_of_read": round(detect / ours, 4),
            "target": 0.05,
        },
        "memory": {
            "n_small": n_small,
            "n_large": 4 * n_small,
            "peak_rss_small_mb": round(rss_small / 2**20, 1),
            "peak_rss_large_mb": round(rss_large / 2**20, 1),
            "rss_growth": round(rss_large / rss_small - 1, 4),
            "target": "flat (growth < 0.1)",
        },
    }
    result["pass"] = {
        "read": result["read"]["ratio"] >= 0.9,
        "workers": result["workers"]["speedup"] >= 1.6,
        "tissue": result["tissue"]["fraction_of_read"] <= 0.05,
        "memory": result["memory"]["rss_growth"] < 0.1,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
