#!/usr/bin/env python
"""LiT benchmark: steps/s with and without the locked-text-tower cache (issue 17 item 7).

Prints one JSON object. Both runs train the same LiT model (image tower ``mmpath-demo-vit``,
locked real all-MiniLM-L6-v2 text tower, trainable projections) with the same seed on the same
synthetic image-caption set (captions repeat, as weak captions do), batch 64, through
:func:`mmpath.train.fit`; only ``model.cache_text`` differs. The cache runs MiniLM once per
distinct caption (its features are reused; the trainable projection still runs every step),
so the losses are bit-identical (``losses_identical``; also tests/train/test_clip.py).

Throughput is steps/s over the steady steps (the first 3 are dropped: they fill the cache),
timed between consecutive step boundaries, wall clock and per CPU-second of the process (one
torch thread), median of ``--repeats`` with the runs alternating. MiniLM comes from
``$MMPATH_TESTDATA/minilm`` (``make testdata``) or the normal weight resolver.

Usage::

    python tools/bench/bench_lit.py            # 20 steps x 3 repeats
    python tools/bench/bench_lit.py --quick    # 10 steps x 1 repeat
    python tools/bench/bench_lit.py --quick --long-captions   # sentence captions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def run(cache: bool, steps: int, data: Path, out: Path) -> dict:
    import torch

    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    minilm = Path(os.environ.get("MMPATH_TESTDATA", "~/.cache/mmpath/testdata")).expanduser()
    text_kwargs = (
        "{weights: " + str(minilm / "minilm") + "}" if (minilm / "minilm").is_dir() else "{}"
    )
    overrides = {
        "out": str(out),
        "model.mode": "lit",
        "model.image": "mmpath-demo-vit",
        "model.text": "minilm",
        "model.proj_dim": 64,
        "model.text_kwargs": text_kwargs,
        "model.cache_text": str(cache).lower(),
        "data.train": f"[{data}]",
        "data.val_fraction": 0.1,
        "data.input_size": 64,
        "train.batch_size": 64,
        "train.max_steps": steps,
        "train.epochs": 100,
        "train.quiet": "true",
        "train.log_every_steps": 1,
        "train.val_every_epochs": 0,
    }
    spec = get_task("clip")
    cfg = load_config(spec.config, None, [f"{k}={v}" for k, v in overrides.items()])
    marks: list[tuple[float, float]] = []
    torch.set_num_threads(1)
    res = fit(
        spec.build,
        cfg,
        on_step=lambda s, loss: marks.append((time.perf_counter(), time.process_time())),
    )
    steady = marks[3:]
    n = len(steady) - 1
    return {
        "steps_per_s": n / (steady[-1][0] - steady[0][0]),
        "steps_per_cpu_s": n / (steady[-1][1] - steady[0][1]),
        "losses": res.losses,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="10 steps x 1 repeat")
    p.add_argument(
        "--long-captions", action="store_true", help="sentence-length captions (~20 tokens)"
    )
    args = p.parse_args()
    steps, repeats = (10, 1) if args.quick else (args.steps, args.repeats)
    from mmpath.train.synthetic import write_caption_set

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_caption_set(root / "data", 720, size=64, seed=0)
        if args.long_captions:  # weak captions as sentences, as in the demo LiT recipe
            import pandas as pd

            df = pd.read_csv(data)
            df["caption"] = (
                "an H&E tile of tissue showing "
                + df["caption"]
                + (" under a light microscope, with stroma and scattered nuclei at 20x")
            )
            df.to_csv(data, index=False)
        got: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(repeats):
            for cache in (False, True) if r % 2 == 0 else (True, False):
                got[cache].append(run(cache, steps, data, root / f"run-{cache}-{r}"))
    med = {
        c: {k: statistics.median(x[k] for x in got[c]) for k in ("steps_per_s", "steps_per_cpu_s")}
        for c in got
    }
    print(
        json.dumps(
            {
                "model": "LiT: mmpath-demo-vit (64 px) + locked all-MiniLM-L6-v2, batch 64",
                "steps": steps,
                "captions": "sentences (~20 tokens)" if args.long_captions else "2 words",
                "distinct_captions": 9,
                "repeats": repeats,
                "no_cache": med[False],
                "cache": med[True],
                "speedup": med[True]["steps_per_s"] / med[False]["steps_per_s"],
                "speedup_cpu": med[True]["steps_per_cpu_s"] / med[False]["steps_per_cpu_s"],
                "losses_identical": all(
                    a["losses"] == b["losses"] for a, b in zip(got[False], got[True], strict=True)
                ),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
