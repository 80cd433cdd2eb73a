"""Demo step: slide-level learning (ABMIL) on a SYNTHETIC cohort with a known answer.

No real cohort ships with mmpath, so this step makes one: 40 tile tables whose embeddings hide
the slide label in a rare tile type (2-5 % of the tiles; see
:mod:`mmpath.datasets.synthetic_mil`). It cross-validates gated attention MIL through
``mmpath train mil``'s code path (2 patient-grouped folds, seconds on the CPU), shows the
held-out scores and ROC, and draws the attention of one held-out positive slide next to the
truth.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from mmpath import _keys as K
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

LABEL = (
    "<p class='note'><b>Synthetic cohort.</b> The 40 slides below are generated tile "
    "embeddings, not tissue: positive slides carry a rare tile type (2-5 % of tiles). The step "
    "shows that attention MIL finds it and where it looks; it says nothing about real data.</p>"
)
OVERRIDES = [
    "model.hidden=64",
    "model.att_dim=32",
    "train.epochs=12",
    "train.lr=4e-4",
    "cv.folds=2",
    "cv.final=false",
    "train.quiet=true",
    "train.device=cpu",
]


def run(ctx: DemoContext) -> list[Section]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on shared cores
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(threads)


def _run(ctx: DemoContext) -> list[Section]:
    import matplotlib.pyplot as plt
    import pandas as pd

    from mmpath import tl
    from mmpath.config import load_config
    from mmpath.datasets.synthetic_mil import SIGNAL, SYNTH_REP, synthetic_mil_cohort
    from mmpath.train.tasks.mil import MILRunConfig
    from mmpath.train.tasks.mil_report import run_mil

    cohort = synthetic_mil_cohort(40, seed=0)
    out = ctx.out / "runs" / "mil"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(MILRunConfig, None, [f"out={out}", f"data.use_rep={SYNTH_REP}", *OVERRIDES])
    result = run_mil(cfg, tables=cohort.tables, labels=cohort.labels)
    report = json.loads((out / "report" / "metrics.json").read_text(encoding="utf-8"))
    oof = pd.read_csv(out / "report" / "predictions.csv")
    # a held-out positive slide of the last fold (the model predict_slides loads here)
    last = oof[(oof["fold"] == oof["fold"].max()) & (oof["truth"] == "positive")]
    sid = str(last["sample"].iloc[0])
    table = next(t for t in cohort.tables if t.obs[K.SLIDE_ID].iloc[0] == sid).copy()
    slides = tl.predict_slides(table, result.run_dir)
    xy = table.obsm[K.SPATIAL]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    axes[0].scatter(xy[:, 0], -xy[:, 1], c=table.obs[SIGNAL].to_numpy(int), s=14, cmap="Reds")
    axes[0].set_title(f"{sid}: the rare tile type (truth)")
    im = axes[1].scatter(xy[:, 0], -xy[:, 1], c=table.obs[K.MIL_ATTENTION], s=14, cmap="magma")
    axes[1].set_title("ABMIL attention (held-out slide)")
    fig.colorbar(im, ax=axes[1])
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("SYNTHETIC cohort - not tissue")
    from sklearn.metrics import roc_auc_score

    att_auc = roc_auc_score(table.obs[SIGNAL], table.obs[K.MIL_ATTENTION])
    stats = {
        "cohort": f"{len(cohort.tables)} synthetic slides, "
        f"{cohort.labels[K.PATIENT_ID].nunique()} patients",
        "cross-validation": f"{len(report['folds'])} folds grouped by patient",
        **{f"mean {k}": f"{v:.3f} ± {report['sd'][k]:.3f}" for k, v in report["mean"].items()},
        f"P(positive) of {sid}": float(slides.obs[K.class_key(K.MIL, "positive")].iloc[0]),
        "attention AUROC vs the rare tiles": float(att_auc),
        "outputs": "runs/mil/report/ (metrics.json, predictions.csv, confusion.csv, roc.png)",
    }
    from PIL import Image

    roc = np.asarray(Image.open(out / "report" / "roc.png").convert("RGB"))
    fig_roc, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(roc)
    ax.set_axis_off()
    body = (
        LABEL
        + table_html(stats)
        + figure_html(fig, "attention vs truth")
        + figure_html(fig_roc, "out-of-fold ROC")
    )
    return [Section("Slide-level learning: attention MIL (synthetic cohort)", body)]
