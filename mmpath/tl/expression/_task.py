"""Moved to :mod:`mmpath.train.tasks.expr` (kept so old imports work)."""

from mmpath.train.tasks.expr import (  # noqa: F401
    ExprDataConfig,
    ExprHeadConfig,
    ExprHeadTask,
    ExprRunConfig,
    ExprTask,
    build,
)
