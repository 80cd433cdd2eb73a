#!/usr/bin/env python
"""Real-data figures of the README heads table, measured on the histolytics stroma (issue 17).

Prints one JSON object. Every number comes from `tools/fetch_test_data histolytics` data:

* ``anomaly``: per-nucleus 32 px crops (423 nuclei). Normal = connective + inflammatory,
  anomaly = neoplastic (only 5 cells: AUROC steps are 1/5 of the positives' ranks, so read
  these as indications, not estimates). A VAE (configs/vae-tiny.yaml, 8 epochs) is trained on
  70% of the normal crops (seeded); AUROC is measured on the other 30% plus all 5 neoplastic
  crops, per score. kNN (pooled demo-ViT embedding) and PatchCore (patch features) use the
  same training crops as the bank (64 px crops around the same cells, demo ViT).

Usage: ``python tools/real_data_figures.py anomaly [--out /tmp/figs]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _split(classes: np.ndarray, seed: int = 0):
    normal = np.isin(classes, ["connective", "inflammatory"])
    idx = np.flatnonzero(normal)
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(idx, int(round(0.7 * len(idx))), replace=False))
    test = np.setdiff1d(np.arange(len(classes)), train)
    return train, test, ~normal


def anomaly_figures(out: Path) -> dict:
    import torch
    from PIL import Image

    from mmpath.config import load_config
    from mmpath.datasets.stromal import stromal_nuclei
    from mmpath.models.heads import load_trained_head
    from mmpath.tl._complexity import ComplexityCalibration, vae_scores
    from mmpath.tl.seg_metrics import anomaly_metrics
    from mmpath.train import fit, get_task

    torch.manual_seed(0)
    crops, classes = stromal_nuclei().nucleus_crops(size=32)
    train, test, is_anom = _split(classes)
    folder = out / "normal_crops"
    folder.mkdir(parents=True, exist_ok=True)
    for i in train:
        Image.fromarray(crops[i]).save(folder / f"{i:04d}.png")
    spec = get_task("anomaly")
    cfg = load_config(
        spec.config,
        ROOT / "configs" / "vae-tiny.yaml",
        [
            f"out={out / 'vae'}",
            "data.source=tiles",
            f"data.train=['{folder}']",
            "train.epochs=8",
            "train.quiet=true",
        ],
    )
    res = fit(spec.build, cfg)
    head = load_trained_head(res.model_dir, kind="anomaly")
    cal = ComplexityCalibration.from_dict(head.extra["complexity"])
    x = torch.from_numpy(crops[test]).permute(0, 3, 1, 2).float() / 255
    s = vae_scores(head.model.eval(), x, cal)
    y = is_anom[test]
    aurocs = {}
    for k in ("recon_error", "latent_nll", "complexity", "corrected", "typicality"):
        aurocs[f"vae_{k}"] = round(anomaly_metrics(s[k], y)["auroc"], 3)
    aurocs["vae_default_score"] = aurocs["vae_typicality"]
    pixel_std = crops.reshape(len(crops), -1).std(1) / 255
    aurocs.update(_embedding_aurocs(stromal_nuclei(), train, test, y))
    return {
        "n_train_normal": int(len(train)),
        "n_test_normal": int((~y).sum()),
        "n_test_neoplastic": int(y.sum()),
        "pixel_std_normal_vs_neoplastic": [
            round(float(pixel_std[~is_anom].mean()), 3),
            round(float(pixel_std[is_anom].mean()), 3),
        ],
        "auroc": aurocs,
    }


def _embedding_aurocs(data, train, test, y) -> dict:
    """Pooled kNN vs PatchCore on the demo ViT, 64 px crops around the same cells."""
    import torch

    from mmpath.tl.patchcore import PatchCore
    from mmpath.tl.seg_metrics import anomaly_metrics

    crops, _ = data.nucleus_crops(size=64)
    pc = PatchCore("mmpath-demo-vit", coreset=0.1)
    feats = pc.features(crops)
    pc.fit(None, features=feats[train])
    patch, _ = pc.score(features=feats[test])
    enc, d = pc.encoder, pc.encoder.info.data
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(
        x, size=(d.input_size,) * 2, mode="bilinear", antialias=True
    )
    mean, std = torch.tensor(d.mean).view(1, 3, 1, 1), torch.tensor(d.std).view(1, 3, 1, 1)
    with torch.no_grad():
        e = enc.encode_image((x - mean) / std).features.numpy()
    dist = np.sqrt(((e[test][:, None] - e[train][None]) ** 2).sum(-1)).min(1)
    return {
        "knn_pooled_demo_vit": round(anomaly_metrics(dist, y)["auroc"], 3),
        "patchcore_demo_vit": round(anomaly_metrics(patch, y)["auroc"], 3),
        "patchcore_blocks": pc.indices,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["anomaly"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="mmpath-figs-"))
    fn = {"anomaly": anomaly_figures}[args.what]
    print(json.dumps({args.what: fn(out)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
