#!/usr/bin/env python
"""Stain benchmark (issue 15): normalisation cost per 224 px tile vs the cost of decoding it.

Prints one JSON object. On real H&E tiles (the bundled Aperio sample), side by side in one
process, best of ``--repeats``:

* ``decode``: JPEG-decoding the tile (imagecodecs, quality 90, what a JPEG slide costs);
* ``macenko`` / ``reinhard``: :class:`mmpath.pp.StainNormalizer` (source fitted once per
  slide, applied per tile);
* ``torchstain_macenko`` / ``torchstain_reinhard``: torchstain's ``normalize``, which refits
  the source on every tile (what a per-tile transform built on it would cost);
* ``stain_jitter``: the Macenko augmentation (``mmpath.train.augment.stain_jitter``, a fit
  per tile).

Each is reported in ms per tile and as a multiple of the decode cost.

Usage::

    python tools/bench/bench_stain.py            # 64 tiles, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _best(fn, tiles, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for t in tiles:
            fn(t)
        best = min(best, (time.perf_counter() - t0) / len(tiles))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="tiles")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import imagecodecs
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    import mmpath as mm
    from mmpath.train.augment import sample_rng, stain_jitter

    with mm.datasets.sample_slide() as slide:
        tiles_t = mm.pp.tile(slide, 224, min_tissue=0.7)[: a.n]
        tiles = list(mm.io.read_tiles(slide, tiles_t))
        targets = {m: mm.pp.fit_stain_target(slide, method=m) for m in ("macenko", "reinhard")}
        norms = {m: mm.pp.stain_normalizer(slide, targets[m]) for m in targets}
    encoded = [imagecodecs.jpeg_encode(t, level=90) for t in tiles]
    ts_m = NumpyMacenkoNormalizer()
    ts_m.HERef = np.asarray(targets["macenko"].params["stain_matrix"])
    ts_m.maxCRef = np.asarray(targets["macenko"].params["max_conc"])
    ts_r = NumpyReinhardNormalizer()
    ts_r.target_means = np.asarray(targets["reinhard"].params["means"])
    ts_r.target_stds = np.asarray(targets["reinhard"].params["stds"])
    rng = sample_rng(0, 0, 0)

    cases = {
        "decode": (lambda b: imagecodecs.jpeg_decode(b), encoded),
        "macenko": (norms["macenko"], tiles),
        "reinhard": (norms["reinhard"], tiles),
        "torchstain_macenko": (lambda t: ts_m.normalize(t, stains=False), tiles),
        "torchstain_reinhard": (ts_r.normalize, tiles),
        "stain_jitter": (lambda t: stain_jitter(t, rng, 0.2, 0.1), tiles),
    }
    for fn, data in cases.values():  # warm up
        fn(data[0])
    ms = {k: _best(fn, data, a.repeats) * 1e3 for k, (fn, data) in cases.items()}
    res = {
        "bench": "stain",
        "tile": 224,
        "n_tiles": len(tiles),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ms_per_tile": {k: round(v, 3) for k, v in ms.items()},
        "x_decode": {k: round(v / ms["decode"], 2) for k, v in ms.items() if k != "decode"},
        "speedup_vs_torchstain_per_tile": {
            m: round(ms[f"torchstain_{m}"] / ms[m], 2) for m in ("macenko", "reinhard")
        },
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
