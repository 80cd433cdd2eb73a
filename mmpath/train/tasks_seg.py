"""Moved to :mod:`mmpath.train.tasks.seg` (kept so old imports work)."""

from mmpath.train.tasks.seg import *  # noqa: F401,F403
from mmpath.train.tasks.seg import _annotation_data, _PairDataset, _seg_data  # noqa: F401
