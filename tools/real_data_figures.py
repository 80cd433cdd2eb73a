#!/usr/bin/env python
"""Real-data figures of the README heads table, measured on the histolytics stroma (issue 17).

Prints one JSON object. Every number comes from `tools/fetch_test_data histolytics` data:

* ``anomaly``: per-nucleus 32 px crops (423 nuclei). Normal = connective + inflammatory,
  anomaly = neoplastic (only 5 cells: AUROC steps are 1/5 of the positives' ranks, so read
  these as indications, not estimates). A VAE (configs/vae-tiny.yaml, 8 epochs) is trained on
  70% of the normal crops (seeded); AUROC is measured on the other 30% plus all 5 neoplastic
  crops, per score. kNN (pooled demo-ViT embedding) and PatchCore (patch features) use the
  same training crops as the bank (64 px crops around the same cells, demo ViT); the
  feature-space Gaussian (Ledoit-Wolf Mahalanobis distance on the pooled demo-ViT features)
  uses them as its normal set.

* ``retrieval``: leave-one-out mMV@5 of the 423 nuclei (demo-ViT embeddings of 64 px crops;
  labels connective / inflammatory / neoplastic, so always answering "connective" already
  scores 0.915: the macro mMV@5, mean of per-class accuracies, is the informative one) and of
  600 synthetic anisotropic vectors (8 clusters on a dominant shared offset, plus one
  high-variance nuisance direction unrelated to the labels), with the
  index built plain, centred, and centred + whitened.

* ``probe``: a linear probe of the nucleus class (connective / inflammatory / neoplastic) from
  nucleus-centred crops (32, 64 and 112 px, resized to the encoder's input), demo ViT features
  vs a colour histogram (16 bins per RGB channel), with ``mm.tl.linear_probe`` (standardised
  logistic regression) in 5 folds grouped by 150 px spatial blocks. Only the right half's
  231 nuclei (199 / 27 / 5) are probed: the demo ViT's SSL saw the left half's pixels (never
  a label), so every probed cell is on tissue it never saw. The left half alone holds 4
  inflammatory and no neoplastic cells, too few to train a left-to-right probe.

Usage: ``python tools/real_data_figures.py anomaly|retrieval|probe [--out /tmp/figs]
[--encoder mmpath-demo-vit]``
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
    from mmpath.metrics import anomaly_metrics
    from mmpath.models.heads import load_trained_head
    from mmpath.models.heads._complexity import ComplexityCalibration, vae_scores
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

    from mmpath.metrics import anomaly_metrics
    from mmpath.tl.patchcore import PatchCore

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
    # a Gaussian in the backbone's feature space: Mahalanobis distance to the normal crops'
    # pooled features, with sklearn's Ledoit-Wolf shrunk covariance (128-d from ~280 crops)
    from sklearn.covariance import LedoitWolf

    maha = LedoitWolf().fit(e[train]).mahalanobis(e[test])
    return {
        "gaussian_pooled_demo_vit": round(anomaly_metrics(maha, y)["auroc"], 3),
        "knn_pooled_demo_vit": round(anomaly_metrics(dist, y)["auroc"], 3),
        "patchcore_demo_vit": round(anomaly_metrics(patch, y)["auroc"], 3),
        "patchcore_blocks": pc.indices,
    }


def _embed_demo_vit(crops: np.ndarray, encoder: str = "mmpath-demo-vit") -> np.ndarray:
    import torch

    from mmpath.models.factory import create_encoder

    enc = create_encoder(encoder).eval()
    d = enc.info.data
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(
        x, size=(d.input_size,) * 2, mode="bilinear", antialias=True
    )
    mean, std = torch.tensor(d.mean).view(1, 3, 1, 1), torch.tensor(d.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return enc.encode_image((x - mean) / std).features.numpy()


def _loo_mmv(vectors: np.ndarray, labels: np.ndarray, *, k: int = 5, **build) -> dict:
    """Leave-one-out mMV@k through mm.index (each tile its own slide: never finds itself)."""
    import anndata as ad
    import pandas as pd

    from mmpath import _keys as K
    from mmpath.index import build as build_index
    from mmpath.index.evaluate import majority_vote_at_k

    n = len(vectors)
    sids = [f"c{i}" for i in range(n)]
    obs = pd.DataFrame(
        {K.SLIDE_ID: pd.Categorical(sids), K.X: 0, K.Y: 0, K.TISSUE_FRAC: 1.0, "label": labels},
        index=[K.obs_name(s, 0) for s in sids],
    )
    t = ad.AnnData(obs=obs)
    t.obsm["X_v"] = np.asarray(vectors, np.float32)
    slides = {s: {"path": None, "mpp": 0.5} for s in sids}
    t.uns[K.UNS] = {K.UNS_VERSION: "figs", K.UNS_SLIDES: slides}
    idx = build_index(t, use_rep="X_v", factory="Flat", **build)
    D, ids = idx.search_vectors(t.obsm["X_v"], k + 1)
    hit = np.asarray(labels, object)[np.where(ids >= 0, ids, 0)]
    hit = np.array(
        [
            [h for h, j in zip(row, irow) if j != i][:k]
            for i, (row, irow) in enumerate(zip(hit, ids))
        ],
        object,
    )
    classes = np.unique(labels)
    per_class = [majority_vote_at_k(hit[labels == c], labels[labels == c], k) for c in classes]
    return {
        f"mMV@{k}": round(majority_vote_at_k(hit, labels, k), 3),
        f"macro_mMV@{k}": round(float(np.mean(per_class)), 3),
        "mean_cosine_top1": round(float(D[:, 1].mean()), 4),
    }


def retrieval_figures(out: Path) -> dict:
    """mMV@5 with and without centring: stromal nuclei (demo ViT) and anisotropic synthetic."""
    from mmpath.datasets.stromal import stromal_nuclei

    crops, classes = stromal_nuclei().nucleus_crops(size=64)
    e = _embed_demo_vit(crops)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 32))
    lab = rng.integers(0, 8, 600)
    # a dominant shared direction (anisotropy) over clustered content
    nuisance = rng.standard_normal(32)  # a high-variance direction unrelated to the labels
    syn = (
        6.0
        + centres[lab]
        + 1.2 * rng.standard_normal((600, 32))
        + 4.0 * rng.standard_normal((600, 1)) * nuisance / np.linalg.norm(nuisance)
    )
    res = {}
    for name, (x, y) in {
        "stromal_nuclei_demo_vit": (e, np.asarray(classes, object)),
        "synthetic_anisotropic": (syn, lab.astype(str).astype(object)),
    }.items():
        res[name] = {
            "plain": _loo_mmv(x, y),
            "center": _loo_mmv(x, y, center=True),
            "center_whiten": _loo_mmv(x, y, center=True, whiten=True),
        }
    return res


def colour_histogram(crops: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel RGB histograms (``bins`` each), as fractions of the crop's pixels."""
    n, h, w, _ = crops.shape
    flat = crops.reshape(n, h * w, 3).astype(np.int64) * bins // 256  # bin of each value
    out = np.zeros((n, 3, bins))
    for c in range(3):
        np.add.at(out[:, c], (np.repeat(np.arange(n), h * w), flat[:, :, c].ravel()), 1)
    return out.reshape(n, 3 * bins) / (h * w)


def probe_figures(out: Path, encoder: str = "mmpath-demo-vit") -> dict:
    """Linear probe of the right half's nucleus classes: encoder vs colour histogram."""
    import anndata as ad
    import pandas as pd

    from mmpath.datasets.stromal import stromal_nuclei
    from mmpath.tl.probe import linear_probe

    data = stromal_nuclei()
    right = np.flatnonzero(data.centroids[:, 0] >= data.image.shape[1] // 2)
    block = (data.centroids[right] // 150).astype(int)
    obs = pd.DataFrame(
        {"label": data.classes[right], "block": [f"{x}_{y}" for x, y in block]},
        index=[str(i) for i in right],
    )
    res: dict = {"n": dict(obs["label"].value_counts()), "crops": {}}
    for size in (32, 64, 112):
        crops, _ = data.nucleus_crops(size=size)
        t = ad.AnnData(obs=obs.copy())
        t.obsm["X_encoder"] = _embed_demo_vit(crops[right], encoder)
        t.obsm["X_hist"] = colour_histogram(crops[right])
        row = {}
        for name, rep in (("encoder", "X_encoder"), ("colour_histogram", "X_hist")):
            m = linear_probe(t, label="label", use_rep=rep, groups="block", n_splits=5)
            row[name] = {
                k: round(float(m.loc["mean", k]), 3)
                for k in ("balanced_accuracy", "auroc_macro", "f1_weighted")
            }
        res["crops"][f"{size}px"] = row
    res["encoder"] = encoder
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["anomaly", "retrieval", "probe"])
    p.add_argument("--encoder", default="mmpath-demo-vit", help="probe: the encoder to probe")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="mmpath-figs-"))
    if args.what == "probe":
        res = probe_figures(out, args.encoder)
    else:
        res = {"anomaly": anomaly_figures, "retrieval": retrieval_figures}[args.what](out)
    print(json.dumps({args.what: res}, indent=1, default=int))
    return 0


if __name__ == "__main__":
    sys.exit(main())
