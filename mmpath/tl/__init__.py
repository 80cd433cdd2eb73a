"""Tools: compute on the tile table (embeddings, zero-shot, probes, expression, heads).

Verbs on tables only: array metrics and fold helpers live in :mod:`mmpath.metrics`
(``mm.tl.dice_jaccard``, ``anomaly_metrics``, ``group_kfold`` and ``cv_groups`` still work,
with a DeprecationWarning).

Example
-------
>>> mm.tl.embed(tiles, "tiny_vit")
>>> slides = mm.tl.zero_shot(tiles, ["tumor", "stroma"], "plip")
"""

from mmpath._moved import moved
from mmpath.tl.aggregate import aggregate
from mmpath.tl.anomaly import anomaly, anomaly_knn
from mmpath.tl.embed import SlideEmbedding, embed, embed_slide
from mmpath.tl.expression import (
    ExpressionModel,
    evaluate_expression,
    fit_expression,
    morphology_features,
    predict_expression,
    summarize_expression,
)
from mmpath.tl.mil import embed_slides, predict_slides
from mmpath.tl.patchcore import anomaly_patchcore
from mmpath.tl.probe import linear_probe
from mmpath.tl.seg_baselines import baseline_segment
from mmpath.tl.segment import SegmentationResult, area_table, segment, segment_slide
from mmpath.tl.text import embed_text
from mmpath.tl.zeroshot import DEFAULT_TEMPLATES, class_embeddings, zero_shot

__all__ = [
    # embeddings
    "embed",
    "embed_slide",
    "embed_text",
    "SlideEmbedding",
    "aggregate",
    # zero-shot and evaluation
    "zero_shot",
    "class_embeddings",
    "DEFAULT_TEMPLATES",
    "linear_probe",
    # image-to-RNA
    "fit_expression",
    "predict_expression",
    "evaluate_expression",
    "summarize_expression",
    "morphology_features",
    "ExpressionModel",
    # segmentation and anomaly
    "segment",
    "segment_slide",
    "SegmentationResult",
    "area_table",
    "baseline_segment",
    "anomaly",
    "anomaly_knn",
    "anomaly_patchcore",
    # slide-level learning
    "predict_slides",
    "embed_slides",
]

# Array metrics and fold helpers moved to mm.metrics (a leaf); the old names still work here,
# with a DeprecationWarning, and are the same objects.
__getattr__ = moved(
    __name__,
    {
        "dice_jaccard": "mmpath.metrics.dice_jaccard",
        "anomaly_metrics": "mmpath.metrics.anomaly_metrics",
        "group_kfold": "mmpath.metrics.group_kfold",
        "cv_groups": "mmpath.metrics.cv_groups",
    },
)
