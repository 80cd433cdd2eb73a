#!/usr/bin/env python
"""Benchmark: many tiny slides vs one slide of as many tiles, through ``mm.tl.embed`` and
``mmpath embed`` (issue 11: per-slide fixed costs must not dominate).

Data (cached under ``$MMPATH_BENCH_CACHE``): ``N`` one-tile slides (112 px PNG crops of the
bundled sample at 0.5 µm/px, each tiled into its own table) and one slide made of the same
``N`` crops side by side (one table of ``N`` tiles). Model: ``mmpath-demo-vit`` (112 px input,
the real demo encoder), one torch thread.

Measured side by side in one run, interleaved over repetitions:

* ``api_one``: ``mm.tl.embed`` on the one-slide table (default workers);
* ``api_many``: ``mm.tl.embed`` on the cohort of the ``N`` one-tile tables (``mm.io.concat``);
* ``cli_one`` / ``cli_many``: ``mmpath embed`` (default options) on the one table / the ``N``
  tables, each in a fresh process (start-up included on both sides).

The figure of merit is ``ratio = many rate / one rate`` (goal >= 0.8). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ENCODER = "mmpath-demo-vit"
SIZE = 112


def make_data(cache: Path, n: int) -> tuple[Path, list[Path]]:
    """``(one.h5ad, [many/i.h5ad ...])`` for ``n`` tiles (cached)."""
    import numpy as np
    from PIL import Image

    import mmpath as mm

    root = cache / f"slides-{n}"
    one = root / "one.h5ad"
    many = [root / "many" / f"s{i:05d}.h5ad" for i in range(n)]
    if one.exists() and all(p.exists() for p in many):
        return one, many
    shutil.rmtree(root, ignore_errors=True)
    (root / "png").mkdir(parents=True)
    with mm.datasets.sample_slide() as s:
        W, H = s.dimensions
        big = s.read_region((0, 0), 0, (W, H))
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, W - SIZE, n), rng.integers(0, H - SIZE, n)
    crops = [big[y : y + SIZE, x : x + SIZE] for x, y in zip(xs, ys, strict=True)]
    side = int(np.ceil(np.sqrt(n)))
    mosaic = np.full((side * SIZE, side * SIZE, 3), 255, np.uint8)
    for i, c in enumerate(crops):
        r, q = divmod(i, side)
        mosaic[r * SIZE : (r + 1) * SIZE, q * SIZE : (q + 1) * SIZE] = c
    Image.fromarray(mosaic).save(root / "png" / "one.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mm.io.open_slide(root / "png" / "one.png", mpp=0.5) as slide:
            t = mm.pp.tile(slide, SIZE, mpp=0.5, min_tissue=0.0)
        mm.io.write_h5ad(t[:n].copy(), one)
        for i, c in enumerate(crops):
            png = root / "png" / f"s{i:05d}.png"
            Image.fromarray(c).save(png)
            with mm.io.open_slide(png, mpp=0.5) as slide:
                mm.io.write_h5ad(mm.pp.tile(slide, SIZE, mpp=0.5, min_tissue=0.0), many[i])
    return one, many


def api_rate(tables, enc) -> float:
    import mmpath as mm

    t0 = time.perf_counter()
    adata = tables[0] if len(tables) == 1 else mm.io.concat(tables)
    mm.tl.embed(adata, enc)
    return adata.n_obs / (time.perf_counter() - t0)


def cli_rate(paths: list[Path], work: Path, n_tiles: int) -> float:
    """``mmpath embed`` on copies of ``paths`` (fresh tables each time), tiles/s."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copies = []
    for p in paths:
        copies.append(work / p.name)
        shutil.copyfile(p, copies[-1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmpath", "-q", "embed", *map(str, copies), "--encoder", ENCODER]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return n_tiles / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1000, help="tiles = one-tile slides (1000)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-cli", action="store_true", help="API only")
    args = p.parse_args(argv)

    import torch

    import mmpath as mm

    torch.set_num_threads(1)
    cache = Path(os.environ.get("MMPATH_BENCH_CACHE", "~/.cache/mmpath/bench")).expanduser()
    one_path, many_paths = make_data(cache, args.n)
    one = [mm.io.read_h5ad(one_path)]
    many = [mm.io.read_h5ad(p) for p in many_paths]
    enc = mm.models.create_encoder(ENCODER)
    api_rate([one[0][:32].copy()], enc)  # warm-up
    rows: dict[str, list[float]] = {"api_one": [], "api_many": [], "cli_one": [], "cli_many": []}
    work = cache / "work"
    for _ in range(args.reps):
        rows["api_one"].append(api_rate([one[0].copy()], enc))
        rows["api_many"].append(api_rate([t.copy() for t in many], enc))
        if not args.no_cli:
            rows["cli_one"].append(cli_rate([one_path], work, args.n))
            rows["cli_many"].append(cli_rate(many_paths, work, args.n))
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    out = {
        "bench": "embed_many_slides",
        "encoder": ENCODER,
        "tile_px": SIZE,
        "n_tiles": args.n,
        "n_slides_many": len(many_paths),
        "reps": args.reps,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "tiles_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_many_vs_one": {
            "api": round(med["api_many"] / med["api_one"], 3),
            **({"cli": round(med["cli_many"] / med["cli_one"], 3)} if "cli_one" in med else {}),
        },
        "goal_ratio": 0.8,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
