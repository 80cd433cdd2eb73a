"""Demo step: a segmentation overlay and an anomaly heatmap on the sample, from toy heads.

Both heads are trained here for a few seconds on the CPU, so the pictures show the machinery
(training through the shared loop, whole-slide tiled inference with blending, per-tile
scores), not a tissue model:

* a U-Net on the tiny random ViT, trained on synthetic images where purple (haematoxylin-
  dense) shapes sit on pink; applied to the sample at 4 µm/px it marks haematoxylin-dense
  regions;
* a VAE trained on the sample's own tissue tiles, which then scores each tile by how badly
  it reconstructs it.
"""

from __future__ import annotations

import shutil
import time
import warnings

import numpy as np

from mmpath import _keys as K
from mmpath import datasets, io, pl, pp, tl
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

SEG_MPP = 4.0
LABEL = (
    "<p class='note'><b>Toy models.</b> Both heads below were trained for a few seconds on the "
    "CPU (the U-Net on synthetic images, the VAE on this slide's own tiles) to show the "
    "pipeline end to end. The overlay and heatmap are <b>not</b> tissue classifications.</p>"
)


SEG_OVERRIDES = [
    "data.synthetic_kind=colour",
    "data.synthetic_n=96",
    "data.tile_size=32",
    "model.encoder=mmpath-demo-vit",  # the shipped SSL demo ViT, never a random one
    "model.decoder_channels=8",
    "model.stem_channels=8",
    "train.epochs=4",
    "train.batch_size=16",
    "train.lr=0.003",
    "train.weight_decay=0.0001",
]
VAE_OVERRIDES = [
    "model.image_size=32",
    "model.latent_dim=16",
    "model.base_channels=16",
    "train.epochs=6",
    "train.batch_size=8",
    "train.lr=0.003",
    "train.weight_decay=0.0",
]


def _train(task: str, out, overrides: list[str]):
    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    shutil.rmtree(out, ignore_errors=True)  # each demo run trains afresh (a re-run must work)
    spec = get_task(task)
    common = [f"out={out}", "train.quiet=true", "train.device=cpu", "train.val_every_epochs=0"]
    return fit(spec.build, load_config(spec.config, None, [*common, *overrides]))


def _overlay(slide, res):
    import matplotlib.pyplot as plt

    from mmpath.io.masks import palette

    thumb = slide.get_thumbnail(768)
    H, W = thumb.shape[:2]
    ys = np.minimum((np.arange(H) * res.mask.shape[0] / H).astype(int), res.mask.shape[0] - 1)
    xs = np.minimum((np.arange(W) * res.mask.shape[1] / W).astype(int), res.mask.shape[1] - 1)
    labels = res.mask[np.ix_(ys, xs)]
    colours = np.asarray(palette(len(res.class_names)), np.float32)
    over = thumb.astype(np.float32)
    fg = labels > 0
    over[fg] = 0.5 * over[fg] + 0.5 * colours[labels[fg]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 6.5))
    axes[0].imshow(thumb)
    axes[0].set_title("sample (CMU-1-Small-Region)")
    axes[1].imshow(over.astype(np.uint8))
    axes[1].set_title(f"toy U-Net: '{res.class_names[1]}' in red ({res.mpp:.1f} µm/px mask)")
    for ax in axes:
        ax.axis("off")
    fig.suptitle("TOY MODEL (seconds of training on synthetic data) - not a tissue classifier")
    fig.tight_layout()
    return fig


def run(ctx: DemoContext) -> list[Section]:
    import torch

    # Tiny models gain nothing from intra-op threads, and on shared cores OpenMP spin-waiting
    # can make them many times slower: run this step on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(threads)


def _run(ctx: DemoContext) -> list[Section]:
    slide = ctx.state.get("slide") or datasets.sample_slide()
    tiles = ctx.state.get("tiles")
    if tiles is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tiles = pp.tile(slide, 224, mpp=0.5, min_tissue=0.5)
    tiles = tiles.copy()
    runs = ctx.out / "runs"

    t0 = time.perf_counter()
    seg_run = _train("seg", runs / "seg", SEG_OVERRIDES)
    t_seg = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = tl.segment_slide(slide, seg_run.model_dir, mpp=SEG_MPP, overlap=8)
    t_inf = time.perf_counter() - t0
    res.save(ctx.out / "seg", formats=("png", "geojson"))
    tl.segment(tiles, seg_run.model_dir, slide=slide, mpp=SEG_MPP, overlap=8)

    io.write_h5ad(tiles, ctx.out / "tiles_heads.h5ad")
    t0 = time.perf_counter()
    table = str(ctx.out / "tiles_heads.h5ad").replace("'", "''")  # inside YAML '...'
    vae_run = _train(
        "anomaly", runs / "vae", ["data.source=tiles", f"data.train=['{table}']", *VAE_OVERRIDES]
    )
    t_vae = time.perf_counter() - t0
    tl.anomaly(tiles, vae_run.model_dir, slide=slide)
    ctx.state["tiles_heads"] = tiles

    areas = res.area_stats()
    dense = res.class_names[1]
    score = f"{K.ANOMALY}_score"
    stats = {
        "U-Net": f"mmpath-demo-vit backbone (frozen), {seg_run.steps} steps in {t_seg:.1f} s "
        "on synthetic colour images",
        "whole-slide inference": f"{res.info['n_tiles']} tiles of {res.info['tile_size']} px at "
        f"{SEG_MPP} µm/px, overlap 8 px, {t_inf:.2f} s",
        f"'{dense}' area": f"{areas[dense].get('area_mm2', float('nan')):.3f} mm² "
        f"({100 * areas[dense]['fraction']:.1f}% of the slide)",
        "mean per-tile fraction (tile table)": float(np.nanmean(tl_frac(tiles, dense))),
        "VAE": f"conv encoder, {vae_run.steps} steps in {t_vae:.1f} s on {tiles.n_obs} tiles",
        "anomaly score (min / median / max)": " / ".join(
            f"{v:.4f}" for v in np.percentile(tiles.obs[score], [0, 50, 100])
        ),
        "outputs": "seg/CMU-1-Small-Region.png, .geojson (QuPath), tiles_heads.h5ad",
    }
    fig_seg = _overlay(slide, res)
    fig_an = pl.tiles(
        tiles,
        slide,
        color=score,
        cmap="magma",
        title="TOY VAE: reconstruction error per tile (higher = more unusual)",
    )
    top = tiles.obs[score].sort_values(ascending=False).head(5)
    body = (
        LABEL
        + table_html(stats)
        + figure_html(fig_seg, "segmentation overlay (toy U-Net)")
        + figure_html(fig_an, "anomaly heatmap (toy VAE)")
        + "<p>Most unusual tiles:</p>"
        + table_html([{"tile": k, "score": float(v)} for k, v in top.items()])
    )
    return [Section("Segmentation and anomaly heads (toy models)", body)]


def tl_frac(tiles, class_name: str) -> np.ndarray:
    from mmpath.tl.segment import frac_key

    return tiles.obs[frac_key(K.SEG, class_name)].to_numpy()
