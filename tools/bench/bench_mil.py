#!/usr/bin/env python
"""MIL benchmark: our loop vs a bare PyTorch loop over the same bags; attention scoring speed;
memory flat in the number of slides. Prints one JSON object.

* ``train``: slides/s of :func:`mmpath.train.fit` (the ``mil`` task: bag store on disk,
  seeded tile sampling, padding collate, checkpoints at epoch ends) vs a bare loop that trains
  the same ABMIL head (same init, fused AdamW, batch of one bag) over the same bags held as
  tensors in RAM. Both timed in wall-clock and CPU seconds (one torch thread); target
  ``ratio`` (ours / bare) >= 0.9.
* ``inference``: tiles/s of ABMIL attention scoring on one large bag (no grad).
* ``memory``: peak RSS (VmHWM, reset after imports) of a fresh process that builds the bag
  store from tables on disk and trains one epoch on ``n`` slides, for two cohort sizes; flat =
  the growth from the small to the large cohort is small next to the data size.

Usage::

    python tools/bench/bench_mil.py            # 60 slides x 2 epochs
    python tools/bench/bench_mil.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _cohort(n, dim, seed=0):
    from mmpath.datasets.synthetic_mil import synthetic_mil_cohort

    return synthetic_mil_cohort(n, dim=dim, tiles=(400, 600), seed=seed)


def _cfg(out, dim, epochs):
    from mmpath.config import load_config
    from mmpath.train.tasks.mil import MILRunConfig

    return load_config(
        MILRunConfig,
        None,
        [
            f"out={out}",
            "data.use_rep=X_synth",
            "train.quiet=true",
            "train.device=cpu",
            f"train.epochs={epochs}",
            "cv.folds=0",
            "data.max_tiles=512",
        ],
    )


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_train(n, dim, epochs, tmp):
    import torch

    import mmpath.models.heads.mil  # noqa: F401 - imports (the encoder stack) outside the timing
    from mmpath.train import fit
    from mmpath.train.tasks._mil_data import prepare_mil_data
    from mmpath.train.tasks.mil import MILTask

    cohort = _cohort(n, dim)
    cfg = _cfg(os.path.join(tmp, "ours"), dim, epochs)
    data = prepare_mil_data(cfg, tables=cohort.tables, labels=cohort.labels)
    ours_wall, ours_cpu = _timed(lambda: fit(lambda c, env: MILTask(c, env, data), cfg))

    torch.manual_seed(cfg.train.seed)
    task = MILTask(cfg, None, data)
    head = task.module
    opt = torch.optim.AdamW(head.parameters(), lr=2e-4, weight_decay=1e-5, fused=True)
    bags = [torch.from_numpy(np.array(data.bag(i))) for i in range(len(data))]
    y = torch.as_tensor(data.y)
    rng = np.random.default_rng(0)

    def bare():
        head.train()
        for _ in range(epochs):
            for i in rng.permutation(len(bags)):
                b = bags[i]
                if len(b) > 512:
                    b = b[np.sort(rng.choice(len(b), 512, replace=False))]
                loss = torch.nn.functional.cross_entropy(head(b[None]).logits, y[i : i + 1])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    bare_wall, bare_cpu = _timed(bare)
    steps = n * epochs
    return {
        "slides": n,
        "epochs": epochs,
        "ours_slides_per_s": steps / ours_wall,
        "bare_slides_per_s": steps / bare_wall,
        "ratio": bare_wall / ours_wall,
        "ratio_cpu": bare_cpu / ours_cpu,
    }


def bench_inference(dim, tiles):
    import torch

    from mmpath.models.heads.mil import MILConfig, MILHead

    head = MILHead(MILConfig("abmil", in_dim=dim, n_outputs=2)).eval()
    x = torch.randn(1, tiles, dim)
    with torch.no_grad():
        head(x)
        wall, _ = _timed(lambda: [head(x) for _ in range(5)])
    return {"tiles": tiles, "dim": dim, "tiles_per_s": 5 * tiles / wall}


def _child(n, dim, tmp):
    import torch

    torch.set_num_threads(1)
    from mmpath.datasets.synthetic_mil import write_mil_cohort
    from mmpath.train.tasks.mil_report import run_mil

    folder = os.path.join(tmp, f"c{n}")
    if not os.path.isdir(folder):  # first call: write the tables and exit (a fresh process
        write_mil_cohort(_cohort(n, dim, seed=1), folder)  # then measures the training)
        print(json.dumps({}))
        return
    cfg = _cfg(os.path.join(tmp, f"m{n}"), dim, 1)
    from dataclasses import replace

    d = replace(
        cfg.data,
        tables=(os.path.join(folder, "tables"),),
        labels=os.path.join(folder, "labels.csv"),
    )
    import mmpath.models.heads.mil  # noqa: F401 - the model stack, before the baseline

    # ru_maxrss survives exec (it would report the parent's peak): reset the high-water mark
    # of this process (Linux clear_refs) and read VmRSS / VmHWM from /proc instead.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status("VmRSS")
    run_mil(replace(cfg, data=d))
    print(json.dumps({"rss_before_mb": before, "peak_mb": _status("VmHWM")}))


def _status(field: str) -> float:
    """A /proc/self/status memory field in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def bench_memory(sizes, dim, tmp):
    out = {}
    for n in sizes:
        code = (
            f"import sys; sys.path.insert(0, {os.getcwd()!r}); "
            f"from tools.bench.bench_mil import _child; _child({n}, {dim}, {tmp!r})"
        )
        for _ in range(2):  # write the cohort, then train on it in a fresh process
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        rec["bag_data_mb"] = n * 500 * dim * 4 / 2**20
        out[str(n)] = rec
    a, b = (out[str(s)] for s in sizes)
    out["training_growth_mb"] = (b["peak_mb"] - b["rss_before_mb"]) - (
        a["peak_mb"] - a["rss_before_mb"]
    )
    return out


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    n, epochs, dim = (20, 3, 256) if args.quick else (60, 5, 384)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "train": bench_train(n, dim, epochs, tmp),
            "inference": bench_inference(dim, 20_000 if args.quick else 100_000),
            "memory": bench_memory((20, 80) if args.quick else (40, 160), dim, tmp),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
