#!/usr/bin/env python
"""Training benchmark: mmpath's loop vs open_clip's own ``train_one_epoch``, same model/data.

Prints one JSON object. Both loops train the same ``tiny_clip`` (same seed, same init) on the
same synthetic image-caption set, through the same dataset, augmentation, collate (tokenizer)
and DataLoader batches, with open_clip's ``ClipLoss``:

* ``ours``: :func:`mmpath.train.fit` (``clip`` task; progress bar off, validation and
  mid-epoch checkpoints off, per-step loss logging on);
* ``open_clip``: ``open_clip_train.train.train_one_epoch`` with what ``open_clip_train.main``
  builds around it: AdamW with its gain/bias param groups, ``cosine_lr``, grad clipping and the
  logit-scale clamp. ``open_clip_train`` is imported if installed (the open_clip_torch wheel
  here ships it); otherwise it is taken from the ``open_clip_torch`` sdist of the installed
  version, fetched once with ``pip download`` into ``~/.cache/mmpath/bench/``;
* ``open_clip_fused``: the same open_clip loop given the fused AdamW that ours uses, which
  isolates the loop's own overhead from the optimiser choice.

Throughput is samples/s over the steady steps of one epoch (the first 3 steps are dropped),
timed between consecutive step boundaries in both loops (after ``task.after_step`` in ours,
at the scheduler call in open_clip's). Runs alternate, in a rotating order, and the median of
``--repeats`` is reported, in wall-clock samples/s and in samples per CPU-second of the
process (``*_cpu``; one torch thread, no loader workers), which is far steadier on a shared,
oversubscribed machine. Target (issue 4): ``ratio`` = ours / open_clip >= 0.95.

Usage::

    python tools/bench/bench_train.py            # 40 steps x 3 repeats
    python tools/bench/bench_train.py --quick    # 12 steps x 1 repeat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

CACHE = Path(os.environ.get("MMPATH_BENCH_CACHE", "~/.cache/mmpath/bench")).expanduser()


def open_clip_train_path() -> tuple[Path, str]:
    """Folder holding ``open_clip_train`` (from the open_clip_torch sdist), and its version."""
    import open_clip

    version = open_clip.__version__
    try:
        import open_clip_train  # noqa: F401 - some open_clip_torch wheels include it

        return Path(open_clip_train.__file__).parent.parent, f"installed ({version})"
    except ImportError:
        pass
    dest = CACHE / f"open_clip_src-{version}"
    if not (dest / "open_clip_train" / "train.py").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    tmp,
                    f"open_clip_torch=={version}",
                ],
                check=True,
            )
            sdist = next(Path(tmp).glob("open_clip_torch-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if "/src/open_clip_train/" in m.name]
                for m in members:
                    m.name = m.name.split("/src/", 1)[1]
                tar.extractall(dest, members=members, filter="data")
    return dest, f"open_clip_torch=={version} sdist"


def make_data(n: int) -> Path:
    from mmpath.train.synthetic import write_caption_set

    folder = CACHE / f"captions-{n}"
    if not (folder / "pairs.csv").is_file():
        write_caption_set(folder, n, size=64, seed=0)
    return folder / "pairs.csv"


def config(csv: Path, out: Path, batch: int, size: int):
    from mmpath.config import load_config
    from mmpath.train import get_task

    sets = {
        "out": str(out),
        "model.name": "tiny_clip",
        "data.train": f"[{csv}]",
        "data.val_fraction": 0,
        "data.input_size": size,
        "train.batch_size": batch,
        "train.epochs": 1,
        "train.lr": 1e-3,
        "train.warmup_steps": 2,
        "train.quiet": "true",
        "train.log_every_steps": 10,
        "train.val_every_epochs": 0,
        "train.weight_decay": 0.1,
    }
    return load_config(get_task("clip").config, None, [f"{k}={v}" for k, v in sets.items()])


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def throughput(stamps: list[tuple[float, float]], batch: int, warmup: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process) after warm-up."""
    t = stamps[warmup:]
    n = (len(t) - 1) * batch
    return n / (t[-1][0] - t[0][0]), n / (t[-1][1] - t[0][1])


def run_ours(cfg, warmup: int) -> tuple[float, float]:
    import shutil

    from mmpath.train import fit, get_task
    from mmpath.train.dist import DistEnv

    shutil.rmtree(cfg.out, ignore_errors=True)
    from mmpath.train.core import _seed_everything

    _seed_everything(cfg.train.seed)
    task = get_task("clip").build(cfg, DistEnv())
    stamps: list[tuple[float, float]] = []
    after_step = task.after_step

    def timed_after_step() -> None:  # called once per optimiser step by the loop
        after_step()
        stamps.append(_now())

    task.after_step = timed_after_step
    fit(task, cfg)
    return throughput(stamps, cfg.train.batch_size, warmup)


def run_open_clip(cfg, warmup: int, *, fused: bool) -> tuple[float, float]:
    import torch
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch
    from torch.utils.data import DataLoader

    from mmpath.train import get_task
    from mmpath.train.core import EpochBatchSampler, _seed_everything
    from mmpath.train.dist import DistEnv

    tc = cfg.train
    _seed_everything(tc.seed)
    task = get_task("clip").build(cfg, DistEnv())
    inner = task.module

    class Adapter(torch.nn.Module):  # open_clip's model interface over the same module
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.logit_scale = inner.encoder.logit_scale

        def forward(self, images, texts):
            img, txt, scale = self.inner((images, texts))
            return {"image_features": img, "text_features": txt, "logit_scale": scale}

    class TokensArg:  # open_clip calls texts.to(device=..., non_blocking=...)
        def __init__(self, tokens) -> None:
            self.tokens = tokens

        def to(self, device=None, non_blocking=False):
            return self.tokens.to(device)

    def collate(items):
        images, tokens = task.collate(items)
        return images, TokensArg(tokens)

    model = Adapter()
    dataset = task.train_dataset()
    steps = len(dataset) // tc.batch_size
    sampler = EpochBatchSampler(len(dataset), tc.batch_size, DistEnv(), seed=tc.seed, epoch=0)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=tc.num_workers
    )
    loader.num_batches, loader.num_samples = steps, steps * tc.batch_size
    data = {"train": SimpleNamespace(dataloader=loader, set_epoch=lambda epoch: None)}

    # open_clip_train.main: parameter groups, AdamW, cosine_lr
    def exclude(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": gain_or_bias, "weight_decay": 0.0},
            {"params": rest, "weight_decay": tc.weight_decay},
        ],
        lr=tc.lr,
        betas=tuple(tc.betas),
        eps=tc.eps,
        **({"fused": True} if fused else {}),
    )
    lr_fn = cosine_lr(optimizer, tc.lr, tc.warmup_steps, steps)
    stamps: list[tuple[float, float]] = []

    def scheduler(step):  # called at the start of every step: time the boundaries
        stamps.append(_now())
        return lr_fn(step)

    loss = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True)
    args = SimpleNamespace(
        device="cpu",
        precision="fp32",
        distill=False,
        accum_freq=1,
        grad_clip_norm=tc.grad_clip,
        horovod=False,
        skip_scheduler=False,
        log_every_n_steps=10**9,
        batch_size=tc.batch_size,
        world_size=1,
        rank=0,
        local_rank=0,
        wandb=False,
    )
    train_one_epoch(model, data, loss, 0, optimizer, None, scheduler, None, args)
    stamps.append(_now())
    return throughput(stamps, tc.batch_size, warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 steps, one repeat")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    steps = args.steps or (12 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = 3

    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    src, origin = open_clip_train_path()
    sys.path.insert(0, str(src))
    csv = make_data(steps * args.batch)
    names = ("ours", "open_clip", "open_clip_fused")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(csv, Path(tmp) / "run", args.batch, args.size)
        for r in range(repeats):
            for name in names[r % 3 :] + names[: r % 3]:  # rotate the order between repeats
                if name == "ours":
                    w, c = run_ours(cfg, warmup)
                else:
                    w, c = run_open_clip(cfg, warmup, fused=name == "open_clip_fused")
                wall[name].append(w)
                cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {
        "bench": "train",
        "model": "tiny_clip",
        "batch": args.batch,
        "input_size": args.size,
        "steps_per_run": steps,
        "repeats": repeats,
        "threads": args.threads,
        "open_clip_train": origin,
        "samples_per_s": {k: round(v, 2) for k, v in med.items()},
        "samples_per_cpu_s": {k: round(v, 2) for k, v in med_cpu.items()},
        "runs_wall": {k: [round(x, 2) for x in v] for k, v in wall.items()},
        "ratio": round(med["ours"] / med["open_clip"], 3),
        "ratio_cpu": round(med_cpu["ours"] / med_cpu["open_clip"], 3),
        "ratio_same_optimizer": round(med["ours"] / med["open_clip_fused"], 3),
        "ratio_same_optimizer_cpu": round(med_cpu["ours"] / med_cpu["open_clip_fused"], 3),
        "target": ">= 0.95 (ratio)",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
    }
    assert all(math.isfinite(v) for v in [*med.values(), *med_cpu.values()])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
