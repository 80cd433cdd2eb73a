#!/usr/bin/env python
"""Benchmark of mm.tl.embed: end-to-end tiles/s vs the model's forward-only tiles/s.

End to end = read tiles from a synthetic JPEG pyramid (openslide), preprocess, run the model
(``tl.embed``). Forward only = the same model on pre-loaded tensors of the same batch size.
Both are measured side by side in one process, interleaved over repetitions, for 0, 1 and 2
reader workers; the ratio is the figure of merit (target >= 0.9). Peak RSS is measured in
child processes for N and 2N tiles (it must stay flat: tiles are streamed).

Prints one JSON object. ``--quick`` for a short run while developing. ``--many-slides``
runs ``bench_embed_slides.py`` instead (1,000 one-tile slides vs one slide of 1,000 tiles).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ARCH = "timm:vit_tiny_patch16_224"
RSS_MODEL = "tiny_vit"  # the RSS children only need streaming, not a bigger model


def make_tiles(cache: Path, n_tiles: int, slide_tiles: int, size: int = 224):
    """A tile table of ``n_tiles`` tiles on a synthetic JPEG pyramid (cached on disk)."""
    import mmpath as mm
    from mmpath.datasets import default_spec, write_synthetic_slide

    per_side = int(slide_tiles**0.5) + 1
    side = per_side * size
    path = cache / f"bench-{side}.tif"
    if not path.exists():
        write_synthetic_slide(path, default_spec(side, side, mpp=0.5, levels=(1, 4)))
    table = cache / f"bench-{side}-{n_tiles}.h5ad"
    if table.exists():
        return mm.io.read_h5ad(table)
    with mm.io.open_slide(path) as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiles = mm.pp.tile(slide, size, mpp=0.5, min_tissue=0.0)  # tissue and background
    tiles = tiles[:n_tiles].copy()
    mm.io.write_h5ad(tiles, table)
    return tiles


def encoder():
    import torch

    import mmpath as mm

    torch.manual_seed(0)
    enc = mm.models.create_encoder(ARCH)  # 224 px input, like the tiles: no resize needed
    return enc.eval()


def forward_only(enc, n_tiles: int, batch_size: int) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(min(batch_size, n_tiles - s), 3, 224, 224, generator=g)
        for s in range(0, n_tiles, batch_size)
    ]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            enc.encode_image(x)
    return n_tiles / (time.perf_counter() - t0)


def end_to_end(enc, tiles, batch_size: int, workers: int) -> float:
    import mmpath as mm

    t = tiles.copy()
    t0 = time.perf_counter()
    mm.tl.embed(t, enc, batch_size=batch_size, num_workers=workers)
    return t.n_obs / (time.perf_counter() - t0)


def rss_child(args) -> None:
    """Run in a child: embed N tiles and print peak RSS (MB) of self and of workers."""
    import torch

    import mmpath as mm

    tiles = make_tiles(Path(args.tmp), args.rss_child, args.slide_tiles)  # cached: a read
    torch.manual_seed(0)
    enc = mm.models.create_encoder(RSS_MODEL).eval()  # memory does not depend on the model

    mm.tl.embed(
        tiles[: args.batch_size].copy(), enc, batch_size=args.batch_size, num_workers=0
    )  # warm-up: allocator and kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mm.tl.embed(tiles, enc, batch_size=args.batch_size, num_workers=args.workers)
    print(
        json.dumps(
            {
                "n_tiles": tiles.n_obs,
                "rss_before_mb": round(base, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_worker_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
                ),
            }
        )
    )


def measure_rss(tmp: Path, n: int, slide_tiles: int, batch_size: int, workers: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--rss-child",
        str(n),
        "--tmp",
        str(tmp),
        "--slide-tiles",
        str(slide_tiles),
        "--batch-size",
        str(batch_size),
        "--workers",
        str(workers),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--many-slides" in sys.argv:  # the many-small-slides benchmark (issue 11)
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_embed_slides import main as many

        return many([a for a in sys.argv[1:] if a != "--many-slides"])
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small run while developing")
    p.add_argument("--tiles", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (1: on a shared, oversubscribed 2-core machine "
        "OpenMP with 2 threads runs ~3x slower than with 1 and makes figures noise)",
    )
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    p.add_argument("--slide-tiles", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child is not None:
        return rss_child(args)

    import torch

    torch.set_num_threads(args.threads)
    n = args.tiles or (32 if args.quick else 96)
    reps = args.reps or (1 if args.quick else 3)
    cache = Path(os.environ.get("MMPATH_BENCH_CACHE", "~/.cache/mmpath/bench")).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory():
        tmp = cache
        make_tiles(tmp, 2 * n, 2 * n)  # one slide serves both sizes
        tiles = make_tiles(tmp, n, 2 * n)
        enc = encoder()
        forward_only(enc, args.batch_size, args.batch_size)  # warm-up
        end_to_end(enc, tiles[: args.batch_size].copy(), args.batch_size, 0)  # warm-up
        rows: dict[str, list[float]] = {"forward": [], "w0": [], "w1": [], "w2": []}
        for _ in range(reps):  # interleaved, so load changes on the shared machine hit all
            rows["forward"].append(forward_only(enc, n, args.batch_size))
            for w in (0, 1, 2):
                rows[f"w{w}"].append(end_to_end(enc, tiles, args.batch_size, w))
        med = {k: statistics.median(v) for k, v in rows.items()}
        rss = {
            f"w{w}": {str(k): measure_rss(tmp, k, 2 * n, args.batch_size, w) for k in (n, 2 * n)}
            for w in (0, 2)
        }
    result = {
        "bench": "embed",
        "model": ARCH,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "n_tiles": n,
        "tile_px": 224,
        "batch_size": args.batch_size,
        "reps": reps,
        "forward_only_tiles_per_s": round(med["forward"], 2),
        "end_to_end_tiles_per_s": {k: round(med[k], 2) for k in ("w0", "w1", "w2")},
        "ratio_end_to_end_vs_forward": {
            k: round(med[k] / med["forward"], 3) for k in ("w0", "w1", "w2")
        },
        "ratio_per_rep": {
            k: [round(a / b, 3) for a, b in zip(rows[k], rows["forward"], strict=True)]
            for k in ("w0", "w1", "w2")
        },
        "target_ratio": 0.9,
        "peak_rss_model": RSS_MODEL,
        "peak_rss": rss,
        "rss_growth_mb_per_1000_tiles": {
            w: round((r[str(2 * n)]["peak_rss_mb"] - r[str(n)]["peak_rss_mb"]) / n * 1000, 2)
            for w, r in rss.items()
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
