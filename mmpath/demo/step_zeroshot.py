"""Demo step: zero-shot classification of the sample's tiles, drawn as a heatmap.

Uses ``mmpath-demo-lit``, the demo image-text model shipped in the package: LiT on the locked
all-MiniLM-L6-v2 text tower, trained by ``tools/make_demo_models.py`` on weak captions derived
from measured tile properties (tissue fraction, H&E content, nuclei density). The classes are
the concepts it was trained on. Every figure says "demo model, not diagnostic".
"""

from __future__ import annotations

import time

import numpy as np

from mmpath import _keys as K
from mmpath import io, pl, tl
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

DEMO_ENCODER = "mmpath-demo-lit"  # shipped in the package; see its model card
# Concepts the demo LiT model was trained to know (from measurable tile properties).
# Same as mmpath.models.encoders.demo.DEMO_LIT_CLASSES (not imported: torch-free import).
CLASSES = ("background glass", "dense nuclei", "eosin-rich stroma")
TOP_K = 10
SEED = 0
LABEL = "demo model, not diagnostic"

NOTE = (
    "<p class='note'><b>Demo model, not diagnostic.</b> Zero-shot scores from <b>{name}</b> "
    "({what}): a demo model, not a foundation model, trained by "
    "<code>tools/make_demo_models.py</code> on captions derived from measured colour and "
    "nuclei density, so its classes are those measurable concepts, not diagnoses. "
    "Each class name is put into {n_templates} pathology prompt templates "
    "(modelled on CONCH's), the prompt embeddings are averaged per class, and each tile is "
    "scored by its cosine similarity to each class in the joint image-text space (softmax over "
    "classes). The slide call averages each class's top-{top_k} tile logits (MI-Zero). "
    "None of this says anything about a patient.</p>"
)


def run(ctx: DemoContext) -> list[Section]:
    import torch

    from mmpath import models

    tiles = ctx.state["tiles"]
    slide = ctx.state["slide"]
    torch.manual_seed(SEED)
    encoder = models.create_encoder(DEMO_ENCODER)
    what = "LiT on locked MiniLM, demo weights shipped in the package"
    t0 = time.perf_counter()
    slides = tl.zero_shot(tiles, list(CLASSES), encoder, top_k=TOP_K, slide=slide)
    seconds = time.perf_counter() - t0
    io.write_h5ad(tiles, ctx.out / "tiles.h5ad")
    io.write_h5ad(slides, ctx.out / "zeroshot_slides.h5ad")
    ctx.state["tiles"] = tiles
    ctx.state["zeroshot_slides"] = slides

    run_rec = tiles.uns[K.UNS][K.UNS_RUNS][K.ZS]
    counts = tiles.obs[K.ZS].value_counts()
    sid = str(slides.obs_names[0])
    stats = {
        "encoder": f"{encoder.info.name} ({what})",
        "classes": ", ".join(CLASSES),
        "templates per class": len(run_rec["templates"]),
        "logit scale": f"{run_rec['logit_scale']:.3g} ({run_rec['logit_scale_source']})",
        "tiles classified": tiles.n_obs,
        "tile labels": ", ".join(f"{c}: {int(counts.get(c, 0))}" for c in CLASSES),
        f"slide call (top-{TOP_K} pooling)": f"{slides.obs[K.ZS].iloc[0]}",
        "slide probabilities": ", ".join(
            f"{c}: {p:.3f}" for c, p in zip(CLASSES, np.asarray(slides.X)[0], strict=True)
        ),
        "seconds (incl. embedding if needed)": round(seconds, 2),
    }
    first = run_rec["columns"][1]  # P(dense nuclei)
    fig_score = pl.tiles(
        tiles,
        slide,
        color=first,
        tissue=ctx.state.get("tissue"),
        vmin=0.0,
        vmax=1.0,
        title=f"{sid}: P({CLASSES[1]}), zero-shot, {LABEL}",
    )
    fig_label = pl.tiles(
        tiles,
        slide,
        color=K.ZS,
        tissue=ctx.state.get("tissue"),
        title=f"{sid}: zero-shot label, {LABEL}",
    )
    body = (
        NOTE.format(
            name=encoder.info.name, what=what, n_templates=len(run_rec["templates"]), top_k=TOP_K
        )
        + table_html(stats)
        + figure_html(fig_score, f"zero-shot heatmap ({LABEL})")
        + figure_html(fig_label, f"zero-shot labels ({LABEL})")
    )
    return [Section("Zero-shot classification (demo model, not diagnostic)", body)]
