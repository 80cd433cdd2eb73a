#!/usr/bin/env python
"""Reader benchmark (issue 15): mmpath's default reader vs a bare openslide loop, same tiles.

Run through ``tools/bench/bench_tiling.py --readers`` (this module is its reader section).
Prints one JSON object. On a generated SVS-like pyramid (Aperio description, 256 px tiles,
levels 1/4) stored as JPEG and as RGB JPEG 2000 (Aperio 33005), tiles of 128 and 256 px are
read at level 0 by (a) a bare ``openslide.read_region`` + RGB array loop, (b)
``mm.io.read_tiles`` through ``mm.io.open_slide`` (the default reader, the tifffile fast path
on these files) and (c) the decode-only ceiling: imagecodecs decoding every raw tile the reads
touch, once. Goal: ``ratio`` (b / a, tiles/s) >= 2 on TIFF-family slides. Files the fast
path refuses stay with openslide (a JPEG TIFF with a missing tile; YCbCr JPEG 2000, Aperio
33003): there ``ratio`` >= 0.95, i.e. mmpath's batch assembly costs < 5% over openslide.

Each repeat times both loops back to back (best of ``--repeats``), in wall time (``ratio``)
and in CPU time (``ratio_cpu``: both loops are single-threaded, so this is their cost without
the other processes on a shared machine; the two agree on an idle one). ``open_ms`` gives
openslide's open, mmpath's first open (which decides the reader) and its reopen (the decision
is cached per file for the process). Where openslide is the reader, ``per_tile_overhead_us``
is each side's cost per tile around the decode (the decode stubbed out, CPU time).

Usage::

    python tools/bench/bench_tiling.py --readers --quick    # 2,048 px slides, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def make_slide(path: Path, size: int, compression) -> Path:
    import tifffile

    from mmpath.datasets import default_spec, render

    if path.exists():
        return path
    arr = render(default_spec(size, size, mpp=0.5, levels=(1,), seed=0), (0, 0), (size, size))
    desc = f"Aperio Image Library v12.0.15 \r\n{size}x{size} (256x256) Q=90|AppMag = 20|MPP = 0.5"
    tmp = path.with_suffix(".tmp")
    with tifffile.TiffWriter(tmp) as tw:
        for i, ds in enumerate((1, 4)):
            tw.write(
                arr[::ds, ::ds],
                tile=(256, 256),
                photometric="rgb",
                compression=compression,
                description=desc if i == 0 else None,
                metadata=None,
            )
    os.replace(tmp, path)
    return path


def make_holed(path: Path, size: int) -> Path:
    """A JPEG tiled TIFF with one missing tile: openslide remains its reader."""
    import tifffile

    from mmpath.datasets import default_spec, render

    if path.exists():
        return path
    arr = render(default_spec(size, size, mpp=0.5, levels=(1,), seed=0), (0, 0), (size, size))
    tmp = path.with_suffix(".tmp")
    tifffile.imwrite(
        tmp,
        arr,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    with tifffile.TiffFile(tmp, mode="r+b") as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[-1] = 0  # the bottom-right tile: openslide draws it transparent (white)
        tag.overwrite(counts)
    os.replace(tmp, path)
    return path


def bench(path: Path, tile: int, repeats: int) -> dict:
    import openslide

    import mmpath as mm
    from mmpath.io.slide import policy as slide_mod

    slide_mod._READERS.clear()  # the first open of this run decides the reader (cold)
    t0 = time.perf_counter()
    slide = mm.io.open_slide(path)
    open_cold = time.perf_counter() - t0
    tiles = mm.pp.tile(slide, size=tile, level=0, min_tissue=0.0)
    xy = np.stack([tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()], 1)
    n = len(xy)
    ref, ours, open_ref, open_ours, cpu_ref, cpu_ours = [], [], [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        osr = openslide.OpenSlide(str(path))
        open_ref.append(time.perf_counter() - t0)
        for x, y in xy:
            np.asarray(osr.read_region((int(x), int(y)), 0, (tile, tile)).convert("RGB"))
        osr.close()
        ref.append(time.perf_counter() - t0)
        cpu_ref.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        with mm.io.open_slide(path) as s:
            open_ours.append(time.perf_counter() - t0)
            out = mm.io.read_tiles(s, tiles)
        ours.append(time.perf_counter() - t0)
        cpu_ours.append(time.process_time() - c0)
        assert out.shape[0] == n
    overhead = _overhead_us(path, slide, tiles, xy, tile) if slide.backend == "openslide" else None
    # decode-only ceiling: every raw tile of level 0 decoded once with the page's decoder
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        fh = tf.filehandle
        raw = []
        for off, cnt in zip(page.dataoffsets, page.databytecounts):
            if cnt == 0:
                continue
            fh.seek(off)
            raw.append(fh.read(cnt))
        kw = {"jpegtables": page.jpegtables} if page.compression == 7 else {}
        t0 = time.perf_counter()
        for i, data in enumerate(raw):
            page.decode(data, i, **kw)
        dec = time.perf_counter() - t0
    px = n * tile * tile
    rate_ref, rate_ours = n / min(ref), n / min(ours)
    return {
        "reader": slide.backend,
        "n_tiles": n,
        "openslide_tiles_per_s": round(rate_ref, 1),
        "mmpath_tiles_per_s": round(rate_ours, 1),
        "ratio": round(rate_ours / rate_ref, 3),
        "decode_only_tiles_per_s": round(len(raw) * 256 * 256 / dec / (tile * tile), 1),
        "mmpath_fraction_of_decode_ceiling": round(
            rate_ours / (len(raw) * 256 * 256 / dec / (tile * tile)), 3
        ),
        "megapixels": round(px / 1e6, 2),
        "ratios_per_repeat": [round(r / o, 3) for r, o in zip(ref, ours)],
        # Both loops run on one thread: CPU time is their cost without other processes'
        # share of the cores (on a loaded machine the wall ratio swings +-40% per repeat).
        "ratio_cpu": round(min(cpu_ref) / min(cpu_ours), 3),
        "ratios_cpu_per_repeat": [round(r / o, 3) for r, o in zip(cpu_ref, cpu_ours)],
        **({"per_tile_overhead_us": overhead} if overhead else {}),
        "open_ms": {
            "openslide": round(1e3 * min(open_ref), 2),
            "mmpath_first": round(1e3 * open_cold, 2),
            "mmpath_reopen": round(1e3 * min(open_ours), 2),
        },
    }


def _overhead_us(path: Path, slide, tiles, xy: np.ndarray, tile: int, repeats: int = 9) -> dict:
    """Per-tile cost around openslide's decode, bare loop vs mmpath, with the decode stubbed.

    ``openslide.lowlevel.read_region`` is replaced by a copy of one real RGBA tile, so both
    loops pay the same for "reading" and what is left is each side's own work (RGBA to RGB,
    batch assembly, bookkeeping), in CPU time: the quantity the 0.95x goal is about, and
    steady on a loaded machine where the full-read ratio is not.
    """
    import openslide
    from openslide import lowlevel

    import mmpath as mm

    osr = openslide.OpenSlide(str(path))
    img = osr.read_region((0, 0), 0, (tile, tile))
    real = lowlevel.read_region
    lowlevel.read_region = lambda *a: img.copy()
    bare, ours = [], []
    try:
        for _ in range(repeats):
            c0 = time.process_time()
            for x, y in xy:
                np.asarray(osr.read_region((int(x), int(y)), 0, (tile, tile)).convert("RGB"))
            bare.append(time.process_time() - c0)
            c0 = time.process_time()
            mm.io.read_tiles(slide, tiles)
            ours.append(time.process_time() - c0)
    finally:
        lowlevel.read_region = real
        osr.close()
    n = len(xy)
    return {"bare_loop": round(1e6 * min(bare) / n, 1), "mmpath": round(1e6 * min(ours) / n, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/mmpath/bench").expanduser())
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.repeats = 2048, max(a.repeats, 3)
    a.cache.mkdir(parents=True, exist_ok=True)
    res = {"bench": "tiling.readers", "size": a.size, "load_avg_1m": round(os.getloadavg()[0], 2)}
    fast = ("svs_jpeg", "svs_jpeg2000")
    for name, comp in (("svs_jpeg", "jpeg"), ("svs_jpeg2000", 33005)):
        path = make_slide(a.cache / f"reader_{a.size}_{name}.svs", a.size, comp)
        res[name] = {f"tile_{t}": bench(path, t, a.repeats) for t in (128, 256)}
    kept = {
        "openslide_jpeg_missing_tile": make_holed(a.cache / f"reader_{a.size}_holed.tif", a.size),
        "openslide_svs_ycbcr_jpeg2000": make_slide(
            a.cache / f"reader_{a.size}_ycc.svs", a.size, 33003
        ),
    }
    for name, path in kept.items():
        res[name] = {f"tile_{t}": bench(path, t, a.repeats) for t in (128, 256)}
        assert all(v["reader"] == "openslide" for v in res[name].values()), res[name]
    ratios = [v["ratio"] for k in fast for v in res[k].values()]
    kept_ratios = [v["ratio"] for k in kept for v in res[k].values()]
    res["target"] = {"tiff_family": ">= 2x", "openslide_reader": ">= 0.95x"}
    res["pass"] = {"tiff_family": min(ratios) >= 2.0, "openslide_reader": min(kept_ratios) >= 0.95}
    cpu = [v["ratio_cpu"] for k in kept for v in res[k].values()]
    res["pass_cpu"] = {"openslide_reader": min(cpu) >= 0.95}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
