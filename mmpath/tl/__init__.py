"""(populated by its issue)."""

from mmpath.tl._splits import cv_groups, group_kfold  # noqa: E402
from mmpath.tl.probe import linear_probe  # noqa: E402
from mmpath.tl.zeroshot import DEFAULT_TEMPLATES, class_embeddings, zero_shot  # noqa: E402

__all__ = [*globals().get("__all__", []), "zero_shot", "class_embeddings", "DEFAULT_TEMPLATES",
           "linear_probe", "group_kfold", "cv_groups"]

from mmpath.tl.aggregate import aggregate  # noqa: E402
from mmpath.tl.embed import SlideEmbedding, embed, embed_slide, embed_text  # noqa: E402

__all__ = [*globals().get("__all__", []), "embed", "embed_slide", "embed_text", "SlideEmbedding",
           "aggregate"]

from mmpath.tl.expression import (  # noqa: E402
    ExpressionModel,
    evaluate_expression,
    fit_expression,
    morphology_features,
    predict_expression,
    summarize_expression,
)

__all__ = [*globals().get("__all__", []), "fit_expression", "predict_expression",
           "evaluate_expression", "summarize_expression", "morphology_features",
           "ExpressionModel"]

from mmpath.tl.anomaly import anomaly, anomaly_knn  # noqa: E402
from mmpath.tl.seg_baselines import baseline_segment  # noqa: E402
from mmpath.tl.seg_metrics import anomaly_metrics, dice_jaccard  # noqa: E402
from mmpath.tl.segment import SegmentationResult, area_table, segment, segment_slide  # noqa: E402

__all__ = [*globals().get("__all__", []), "segment", "segment_slide", "SegmentationResult",
           "area_table", "dice_jaccard", "baseline_segment", "anomaly", "anomaly_knn",
           "anomaly_metrics"]
