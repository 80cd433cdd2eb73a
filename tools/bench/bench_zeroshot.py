#!/usr/bin/env python
"""Zero-shot and probe benchmark: mmpath's overhead over doing the same maths by hand.

Prints one JSON object. Both sides run in this process, interleaved, on the same data:

* ``zero_shot.ratio``: throughput (tiles/s) of ``mm.tl.zero_shot`` on precomputed joint-space
  vectors (prompt ensembling, logits, softmax, obs columns, top-k slide pooling, provenance)
  over a bare numpy version of the same computation (normalise, matmul, softmax, argmax, top-k
  mean per slide) given the same class embeddings. Text encoding is excluded from both (the
  toy text tower costs nothing), so this isolates our bookkeeping; >= 0.5 is the goal.
* ``probe.ratio``: rows/s of ``mm.tl.linear_probe`` (logreg) over a plain sklearn loop
  (``StratifiedGroupKFold`` + the same pipeline + the same three metrics); goal >= 0.9.

Usage::

    python tools/bench/bench_zeroshot.py           # 200k tiles x 512 dims, 20k-row probe
    python tools/bench/bench_zeroshot.py --quick   # 20k tiles, 3k-row probe
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import zlib

import numpy as np


def _make_encoder(dim: int):
    import torch

    from mmpath.models.base import Encoder, EncoderInfo, Tokens

    class HashCLIP(Encoder):
        """Text tower: each prompt maps to a fixed random unit vector (seeded by its text)."""

        def __init__(self) -> None:
            super().__init__()
            self.info = EncoderInfo("hash-clip", "image-text", dim, dim, slug="hash_clip")
            self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(100.0)))

        def tokenize(self, texts) -> Tokens:
            return Tokens(torch.tensor([[zlib.crc32(t.encode())] for t in texts]))

        def encode_text(self, tokens: Tokens) -> torch.Tensor:
            rows = [np.random.default_rng(int(s)).normal(size=dim) for s in tokens.input_ids[:, 0]]
            return torch.nn.functional.normalize(torch.tensor(np.stack(rows)).float(), dim=-1)

    return HashCLIP()


def _table(n: int, dim: int, n_slides: int, seed: int = 0):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    slides = np.repeat([f"s{i}" for i in range(n_slides)], n // n_slides)
    obs = pd.DataFrame(
        {
            "slide_id": pd.Categorical(slides),
            "x": rng.integers(0, 100, len(slides)) * 224.0,
            "y": rng.integers(0, 100, len(slides)) * 224.0,
        },
        index=[f"{s}:{i}" for i, s in enumerate(slides)],
    )
    adata = ad.AnnData(obs=obs)
    x = rng.normal(size=(len(slides), dim)).astype(np.float32)
    adata.obsm["X_hash_clip_proj"] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return adata


def _bare_zero_shot(img: np.ndarray, text: np.ndarray, slides: np.ndarray, k: int):
    z = 100.0 * (img / np.linalg.norm(img, axis=1, keepdims=True)) @ text.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    label = p.argmax(1)
    pooled = np.stack([np.sort(z[slides == s], axis=0)[-k:].mean(0) for s in np.unique(slides)])
    return p, label, pooled


def bench_zero_shot(n: int, dim: int, repeats: int) -> dict:
    import mmpath as mm

    enc = _make_encoder(dim)
    classes = ["tumor", "stroma", "necrosis", "lymphocytes", "fat"]
    adata = _table(n, dim, n_slides=20)
    text = mm.tl.class_embeddings(classes, enc)
    img = adata.obsm["X_hash_clip_proj"]
    slides = adata.obs["slide_id"].to_numpy()
    ours, bare = [], []
    mm.tl.zero_shot(adata, classes, enc)  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm.tl.zero_shot(adata, classes, enc)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _bare_zero_shot(img, text, slides, 10)
        bare.append(time.perf_counter() - t0)
    t_ours, t_bare = statistics.median(ours), statistics.median(bare)
    return {
        "n_tiles": adata.n_obs,
        "dim": dim,
        "n_classes": len(classes),
        "n_templates": len(mm.tl.DEFAULT_TEMPLATES),
        "ours_tiles_per_s": round(adata.n_obs / t_ours),
        "bare_numpy_tiles_per_s": round(adata.n_obs / t_bare),
        "ratio": round(t_bare / t_ours, 3),
    }


def _bare_probe(X, y, groups, n_splits: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = []
    cv = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    for tr, te in cv.split(X, y, groups):
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        m.fit(X[tr], y[tr])
        p = m.predict_proba(X[te])
        pred = m.classes_[p.argmax(1)]
        out.append(
            (
                balanced_accuracy_score(y[te], pred),
                f1_score(y[te], pred, average="weighted"),
                roc_auc_score(y[te], p, multi_class="ovr", average="macro"),
            )
        )
    return out


def bench_probe(n: int, dim: int, repeats: int) -> dict:
    import warnings

    import mmpath as mm

    rng = np.random.default_rng(1)
    adata = _table(n, dim, n_slides=20, seed=1)
    centres = rng.normal(size=(4, dim))
    y = rng.integers(0, 4, adata.n_obs)
    adata.obsm["X_feat"] = (centres[y] * 0.3 + rng.normal(size=(adata.n_obs, dim))).astype(
        np.float32
    )
    adata.obs["label"] = [f"c{v}" for v in y]
    X = adata.obsm["X_feat"].astype(np.float64)
    ys = adata.obs["label"].to_numpy()
    groups = adata.obs["slide_id"].to_numpy()
    ours, bare = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            t0 = time.perf_counter()
            df = mm.tl.linear_probe(adata, label="label", use_rep="X_feat")
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = _bare_probe(X, ys, groups, 5, 0)
            bare.append(time.perf_counter() - t0)
    t_ours, t_bare = statistics.median(ours), statistics.median(bare)
    return {
        "n_rows": adata.n_obs,
        "dim": dim,
        "ours_rows_per_s": round(adata.n_obs / t_ours),
        "bare_sklearn_rows_per_s": round(adata.n_obs / t_bare),
        "ratio": round(t_bare / t_ours, 3),
        "balanced_accuracy_ours": round(float(df.loc["mean", "balanced_accuracy"]), 4),
        "balanced_accuracy_bare": round(float(np.mean([r[0] for r in ref])), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args()
    n_zs, n_probe, dim, rep = (20_000, 3_000, 256, 3) if args.quick else (200_000, 20_000, 512, 5)
    result = {
        "bench": "zeroshot",
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or "?"},
        "zero_shot": bench_zero_shot(n_zs, dim, rep),
        "probe": bench_probe(n_probe, 64, max(2, rep - 2)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
