#!/usr/bin/env python
"""Scale benchmark (issue 10 item 8): annotating tiles with a huge polygon, and the tiling
thumbnail with many tiles. Prints one JSON object; every ratio is measured side by side in
this run.

* ``annotate``: a 10^6-vertex outline over a grid of tiles. ``fast`` is
  :func:`mmpath.pp.annotate._label_fractions` (prepared parts, inside/outside short-circuit,
  recursive clipping) on every tile; ``direct`` is the previous code path
  (``_label_fractions_direct``: one exact overlay per tile) timed on a sample of boundary and
  interior tiles, since on all tiles it runs for hours. Reported: seconds per tile for each on
  the same sample (``speedup``), the full fast run, the direct run extrapolated to all tiles,
  and the largest difference between the two on the sample.
* ``thumbnail``: ``mm.pl.tiles`` (one RGBA image at thumbnail size) against the previous
  drawing (one matplotlib ``Rectangle`` per tile in a ``PatchCollection``), each in a child
  process so that peak RSS is its own, for a small and a large tile count. ``growth_mb`` is
  the rise of the peak over the high-water mark left by building the table (0: drawing never
  needed more than building the table did).

Usage::

    python tools/bench/bench_scale.py            # 10^6 vertices, 100k / 552k tiles
    python tools/bench/bench_scale.py --quick    # 10^5 vertices, 10k / 60k tiles
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def _outline(n: int, cx: float, cy: float, r: float):
    import shapely

    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1 + 0.15 * np.sin(7 * t) + 0.02 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    return shapely.Polygon(np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)]).buffer(0)


def bench_annotate(n_vertices: int, grid: int, n_sample: int) -> dict:
    import shapely

    from mmpath.pp.annotate import _label_fractions, _label_fractions_direct

    size = 256
    poly = _outline(n_vertices, grid * size / 2, grid * size / 2, grid * size * 0.4)
    xs, ys = (a.ravel() for a in np.meshgrid(np.arange(grid) * size, np.arange(grid) * size))
    boxes = shapely.box(xs, ys, xs + size, ys + size)
    t0 = time.perf_counter()
    fast = _label_fractions(boxes, poly, size * size)
    t_fast = time.perf_counter() - t0
    boundary = np.flatnonzero((fast > 0) & (fast < 1))
    inside = np.flatnonzero(fast == 1)
    rng = np.random.default_rng(0)
    half = n_sample // 2
    sample = np.r_[
        rng.choice(boundary, min(half, len(boundary)), replace=False),
        rng.choice(inside, min(half, len(inside)), replace=False),
    ]
    t0 = time.perf_counter()
    ref = _label_fractions_direct(boxes[sample], poly, size * size)
    t_direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = _label_fractions(boxes[sample], poly, size * size)
    t_fast_sample = time.perf_counter() - t0
    touching = len(boundary) + len(inside)
    per_direct = t_direct / len(sample)
    return {
        "n_vertices": int(shapely.get_num_coordinates(poly)),
        "n_tiles": int(len(boxes)),
        "n_touching": int(touching),
        "n_boundary": int(len(boundary)),
        "fast_s_all_tiles": round(t_fast, 3),
        "sample_tiles": int(len(sample)),
        "direct_s_per_tile": round(per_direct, 5),
        "fast_s_per_tile_on_sample": round(t_fast_sample / len(sample), 6),
        "speedup_on_sample": round(t_direct / t_fast_sample, 1),
        "direct_s_all_tiles_extrapolated": round(per_direct * touching, 1),
        "speedup_all_tiles_extrapolated": round(per_direct * touching / t_fast, 1),
        "max_abs_diff": float(np.abs(again - ref).max()),
    }


_CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[4])
from bench_scale import thumbnail_child
print(json.dumps(thumbnail_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
"""


def _table(n_side: int, side: int):
    import anndata as ad
    import pandas as pd

    from mmpath import _keys as K

    step = side / n_side
    g = (np.arange(n_side) * step).astype(np.int64)
    xs, ys = (a.ravel() for a in np.meshgrid(g, g))
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(["big"] * xs.size),
            K.X: xs,
            K.Y: ys,
            K.TISSUE_FRAC: np.random.default_rng(0).random(xs.size).astype(np.float32),
        },
        index=pd.RangeIndex(xs.size).astype(str),
    )
    t = ad.AnnData(obs=obs)
    t.uns["mmpath"] = {"slides": {"big": {"tiling": {"size": 224, "size0": float(step)}}}}
    return t


class _BigSlide:
    slide_id = "big"

    def __init__(self, side: int) -> None:
        self.dimensions = (side, side)

    def get_thumbnail(self, max_size: int):
        return np.full((max_size, max_size, 3), 230, np.uint8)

    def close(self) -> None:
        pass


def _old_tiles(adata, slide, color: str, save: str) -> None:
    """The previous drawing: one Rectangle per tile in a PatchCollection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    thumb = slide.get_thumbnail(1024)
    W, _ = slide.dimensions
    scale = thumb.shape[1] / W
    size0 = adata.uns["mmpath"]["slides"]["big"]["tiling"]["size0"]
    fig, ax = plt.subplots(figsize=(7, 7.6), dpi=110)
    ax.imshow(thumb)
    xs = adata.obs["x"].to_numpy() * scale
    ys = adata.obs["y"].to_numpy() * scale
    rects = [Rectangle((x, y), size0 * scale, size0 * scale) for x, y in zip(xs, ys)]
    coll = PatchCollection(rects, cmap="viridis", alpha=0.55, lw=0)
    coll.set_array(adata.obs[color].to_numpy(dtype=float))
    ax.add_collection(coll)
    fig.colorbar(coll, ax=ax, fraction=0.04, pad=0.02, label=color)
    ax.set_xlim(0, thumb.shape[1])
    ax.set_ylim(thumb.shape[0], 0)
    fig.tight_layout()
    fig.savefig(save, format="png")
    plt.close(fig)


def thumbnail_child(which: str, n_side: int, out: str) -> dict:
    import resource

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 - import cost outside the timing

    import mmpath as mm

    side = 150_000
    t = _table(n_side, side)
    slide = _BigSlide(side)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if which == "new":
        mm.pl.tiles(t, slide, color="tissue_frac", save=out)
    else:
        _old_tiles(t, slide, "tissue_frac", out)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "s": round(wall, 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "growth_mb": round((peak - base) / 1024, 1),
    }


def bench_thumbnail(sides: list[int], tmp: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    out: dict = {}
    for n_side in sides:
        row = {}
        for which in ("old", "new"):
            png = os.path.join(tmp, f"{which}-{n_side}.png")
            res = subprocess.run(
                [sys.executable, "-c", _CHILD, which, str(n_side), png, here],
                capture_output=True,
                text=True,
                check=True,
            )
            row[which] = json.loads(res.stdout.strip().splitlines()[-1])
        row["time_ratio_old_over_new"] = round(row["old"]["s"] / max(row["new"]["s"], 1e-9), 1)
        row["peak_rss_ratio_old_over_new"] = round(
            row["old"]["peak_rss_mb"] / row["new"]["peak_rss_mb"], 2
        )
        out[f"{n_side * n_side}_tiles"] = row
    return out


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = ap.parse_args()
    if args.quick:
        ann = bench_annotate(100_000, 100, 40)
        sides = [100, 245]
    else:
        ann = bench_annotate(1_000_000, 316, 40)
        sides = [316, 743]
    with tempfile.TemporaryDirectory() as tmp:
        thumb = bench_thumbnail(sides, tmp)
    print(
        json.dumps(
            {
                "bench": "scale",
                "quick": args.quick,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                },
                "annotate": ann,
                "thumbnail": thumb,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
