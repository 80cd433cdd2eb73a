"""Demo step: image-to-RNA on the real Visium fixture (a smoke demo, not a benchmark).

The fixture (squidpy's test data: 49 mouse-brain spots x 1,999 genes and its real H&E crop)
is found through ``$MMPATH_TESTDATA`` (default ``~/.cache/mmpath/testdata``, filled by
``tools/fetch_test_data``); without it the step says so and is skipped. No pretrained image
encoder can be had offline, so the spots are described by the colour/texture features of
:func:`mmpath.tl.morphology_features`; with a real encoder the same calls apply
(``mm.tl.embed(spots, encoder="uni")``).
"""

from __future__ import annotations

import html
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from mmpath import _keys as K
from mmpath.demo.report import DemoContext, Section, figure_html, table_html

log = logging.getLogger(__name__)

TITLE = "Image-to-RNA (smoke demo: 49 spots is not a benchmark)"
NOTE = (
    "<p class='note'><b>Smoke demo.</b> 49 real Visium spots from one section are far too few "
    "to measure anything: the folds are spatial blocks of one slide and the scores below only "
    "show that the pipeline runs end to end (spots &rarr; tiles &rarr; features &rarr; model "
    "&rarr; per-gene Pearson r &rarr; predicted map). Features are hand-made colour/texture "
    "statistics, not a foundation model.</p>"
)


def _root() -> Path:
    return Path(os.environ.get("MMPATH_TESTDATA", "~/.cache/mmpath/testdata")).expanduser()


def _fixture() -> Path | None:
    folder = _root() / "squidpy"
    ok = (folder / "test_data.h5ad").is_file() and (folder / "test_img.jpg").is_file()
    return folder if ok else None


def _gene_values(st, gene: str):
    x = st[:, gene].X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float).ravel()


def run(ctx: DemoContext) -> list[Section]:
    from mmpath import io, pl, pp, tl

    folder = _fixture()
    if folder is None:
        log.warning(
            "demo: image-to-RNA step skipped: the Visium test fixture is not in %s (run "
            "`make testdata` or tools/fetch_test_data, or set $MMPATH_TESTDATA)",
            _root(),
        )
        return [
            Section(
                TITLE,
                "<p class='note'>Skipped: the Visium test fixture was not found "
                "(set $MMPATH_TESTDATA or run <code>tools/fetch_test_data</code>).</p>",
            )
        ]
    st = io.read_visium(folder / "test_data.h5ad")
    slide = io.open_slide(folder / "test_img.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # edge shifts and spatial-block folds
        spots = pp.spot_tiles(st, slide, diameter_um=55)
        tl.morphology_features(spots, slide)
        params = {"alpha": 10.0}  # 49 spots: the HEST alpha would barely regularise
        scores = tl.evaluate_expression(
            spots, "hvg:20", n_splits=3, params=params, out=ctx.out / "expression"
        )
        model = tl.fit_expression(spots, "hvg:20", params=params)
        model.save(ctx.out / "expression" / "model")
        size = spots.uns[K.UNS][K.UNS_SLIDES][slide.slide_id][K.UNS_TILING]["size"]
        grid = pp.tile(slide, size, min_tissue=0.3)
        tl.morphology_features(grid, slide)
    pred = tl.predict_expression(grid, model)
    summary = tl.summarize_expression(scores)
    per_gene = scores[scores.model == "ridge"].groupby("gene").pearson.mean()
    gene = str(per_gene.idxmax())
    measured = _gene_values(st, gene)
    lo, hi = float(np.nanmin(measured)), float(np.nanmax(measured))
    p_lo, p_hi = float(pred[:, gene].X.min()), float(pred[:, gene].X.max())
    stats = {
        f"mean held-out Pearson r over the {len(per_gene)} genes (ridge)": round(
            float(per_gene.mean()), 3
        ),
        "spots x genes": f"{st.n_obs} x {st.n_vars} (mouse brain, squidpy fixture)",
        "slide mpp (from the spot diameter)": round(slide.mpp, 4),
        "spot tile": f"{size} px = 55 µm",
        "genes": "hvg:20 (log-normalised in the file)",
        "model": "ridge on PCA of 12 morphology features",
        "whole-image tiles predicted": pred.n_obs,
        "mapped gene": f"{gene}, the best of {len(per_gene)} (held-out r = {per_gene.max():.2f}; "
        "the best of many is optimistic)",
        "colour scale of the map": f"{gene}'s measured range over the spots, {lo:.2f} to "
        f"{hi:.2f} (log-normalised); the predictions span only {p_lo:.2f} to {p_hi:.2f}",
    }
    rows = [
        {
            "model": r.model,
            "mean Pearson r": r.pearson_mean,
            "mean Spearman": r.spearman_mean,
            "mse": r.mse_mean,
        }
        for r in summary.itertuples()
    ]
    fig = pl.tiles(
        pred,
        slide,
        color=gene,
        vmin=lo,
        vmax=hi,
        title=f"predicted {gene} (smoke demo); colour = measured range {lo:.2f}-{hi:.2f}",
    )
    body = (
        NOTE
        + table_html(stats)
        + "<h3>3-fold spatial-block CV vs mean baseline</h3>"
        + table_html(rows)
        + figure_html(fig, f"predicted {html.escape(gene)} map")
    )
    return [Section(TITLE, body)]
