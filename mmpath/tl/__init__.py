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
