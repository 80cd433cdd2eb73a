"""Image-to-RNA: predicting spatial gene expression from H&E tile embeddings.

Models (all on frozen embeddings in ``obsm``):

* ``"ridge"``: the HEST-Benchmark baseline, scikit-learn ``PCA(256) -> Ridge``;
* ``"mlp"``: a small MLP head;
* ``"contrastive"``: BLEEP-style image<->expression alignment, predicting the mean expression of
  the nearest reference spots;
* fusion with a per-sample genomic vector, by concatenation (``fusion="concat"``, ridge or mlp)
  or a learned gate (``fusion="gated"``, mlp).

Evaluation follows HEST-Benchmark: per-gene Pearson r (and Spearman), mean over genes,
slide-grouped k-fold (spatial blocks with a warning when slides are fewer than folds), against
a mean-expression baseline.

Example
-------
>>> spots = mm.pp.spot_tiles(st, slide, diameter_um=55, mpp=0.5)
>>> mm.tl.embed(spots, encoder="uni")
>>> model = mm.tl.fit_expression(spots, "hvg:50", method="ridge")
>>> pred = mm.tl.predict_expression(tiles, model)
"""

from __future__ import annotations

from mmpath._moved import moved
from mmpath.tl.expression._api import evaluate_expression, fit_expression, predict_expression
from mmpath.tl.expression._features import MORPH_KEY, morphology_features
from mmpath.tl.expression._model import DEFAULTS, METHODS, ExpressionModel
from mmpath.tl.expression._report import plot_scores, write_report
from mmpath.tl.expression._report import summarize as summarize_expression

__all__ = [
    "fit_expression",
    "predict_expression",
    "evaluate_expression",
    "summarize_expression",
    "morphology_features",
    "ExpressionModel",
    "plot_scores",
    "write_report",
    "METHODS",
    "DEFAULTS",
    "MORPH_KEY",
]

# The per-gene metrics moved to mm.metrics; the old names warn (DeprecationWarning).
__getattr__ = moved(
    __name__,
    {
        n: f"mmpath.metrics.{n}"
        for n in ("pearson_per_gene", "spearman_per_gene", "per_gene_scores")
    },
)
