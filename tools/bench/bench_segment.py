#!/usr/bin/env python
"""Whole-slide segmentation benchmark: tiled inference tiles/s vs the model's forward-only tiles/s.

Prints one JSON object. Both rates are measured side by side in this process on the same model
(a U-Net head on ``tiny_vit``, random weights) and the same tile size:

* ``forward_tiles_per_s``: ``predict_proba`` on pre-made batches already in memory;
* ``wsi_tiles_per_s``: :func:`mmpath.tl.segment_slide` on a generated JPEG pyramid (reading
  through openslide in a thread, blending in another, band accumulator, mask written);
* ``ratio`` = wsi / forward; target >= 0.9 (I/O and blending hidden behind the forward pass).

Usage::

    python tools/bench/bench_segment.py            # 4,096 x 4,096 px slide, 128 px tiles
    python tools/bench/bench_segment.py --quick    # 1,536 x 1,536 px
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def bench_slide(size: int, cache: Path) -> Path:
    from mmpath.datasets import default_spec, write_synthetic_slide

    path = cache / f"seg_synthetic_{size}_jpeg.tif"
    if not path.exists():
        spec = default_spec(size, size, mpp=0.5, levels=(1, 4, 16))
        write_synthetic_slide(path, spec, tile_size=256, compression="jpeg", quality=90)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (1, as bench_embed: a core stays free for the reader "
        "and blender threads, as the CPU does when a GPU runs the model; 0: torch default, "
        "where on 2 cores reading and blending can only steal from the forward pass)",
    )
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import mmpath as mm
    from mmpath.models.heads import TrainedHead, UNetHead
    from mmpath.tl._blend import grid_starts

    size = 1536 if args.quick else 4096
    cache = Path(os.environ.get("MMPATH_BENCH_CACHE", "~/.cache/mmpath/bench")).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    path = bench_slide(size, cache)
    T, overlap = args.tile, args.tile // 8
    torch.manual_seed(0)
    unet = UNetHead(
        mm.models.create_encoder("tiny_vit"), decoder_channels=8, stem_channels=8, input_size=T
    ).eval()
    head = TrainedHead(
        "seg",
        unet,
        ("background", "tissue"),
        tile_size=T,
        mpp=0.5,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    slide = mm.io.open_slide(path)
    n_tiles = len(grid_starts(size, T, T - overlap)) ** 2

    # forward only: the same number of tiles, already in memory as uint8 batches
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, (args.batch_size, T, T, 3), dtype=np.uint8)
    from mmpath.tl.segment import _predictor

    predict = _predictor(head, "cpu")
    predict(batch)  # warm-up
    n_batches = -(-n_tiles // args.batch_size)

    def forward_only() -> float:
        t0 = time.perf_counter()
        for _ in range(n_batches):
            predict(batch)
        return n_batches * args.batch_size / (time.perf_counter() - t0)

    def wsi() -> float:
        t0 = time.perf_counter()
        res = mm.tl.segment_slide(
            slide, head, overlap=overlap, batch_size=args.batch_size, mask_mpp=2.0
        )
        assert res.mask.shape[0] > 0
        return n_tiles / (time.perf_counter() - t0)

    # interleave the two measurements so load changes on a shared machine hit both alike
    fwd, whole = [], []
    for _ in range(2 if args.quick else 3):
        fwd.append(forward_only())
        whole.append(wsi())
    # serial CPU cost of the work the pipeline hides behind the forward pass (load-independent)
    from mmpath.tl._blend import BandAccumulator, tile_window
    from mmpath.tl.segment import _Reader

    reader = _Reader(slide, T, 0.5)
    xs = grid_starts(reader.width, T, T - overlap)
    jobs = [(x, y) for y in xs for x in xs][:256]
    t0 = time.perf_counter()
    imgs = [reader.read(x, y) for x, y in jobs]
    t_read = time.perf_counter() - t0
    preds = [
        predict(np.stack(imgs[i : i + args.batch_size]))
        for i in range(0, len(imgs), args.batch_size)
    ]
    preds = np.concatenate(preds)
    acc = BandAccumulator(reader.width, reader.height, 2, T)
    t0 = time.perf_counter()
    for (x, y), p in zip(jobs, preds, strict=True):
        if x == xs[0] and y != xs[0]:
            list(acc.finish_above(y))
        edges = (x == xs[0], x == xs[-1], y == xs[0], y == xs[-1])
        acc.add(p, x, y, tile_window(T, overlap, overlap // 4, edges=edges))
    t_blend = time.perf_counter() - t0
    t_fwd = len(jobs) / float(np.median(fwd))
    out = {
        "bench": "segment",
        "slide_px": size,
        "tile": T,
        "overlap": overlap,
        "batch_size": args.batch_size,
        "n_tiles": n_tiles,
        "torch_threads": torch.get_num_threads(),
        "forward_tiles_per_s": round(float(np.median(fwd)), 2),
        "wsi_tiles_per_s": round(float(np.median(whole)), 2),
        "ratio": round(float(np.median(whole) / np.median(fwd)), 3),
        "target_ratio": 0.9,
        "read_cpu_fraction_of_forward": round(t_read / t_fwd, 3),
        "blend_cpu_fraction_of_forward": round(t_blend / t_fwd, 3),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
