"""Moved to :mod:`mmpath.train.tasks.anomaly` (kept so old imports work)."""

from mmpath.train.tasks.anomaly import *  # noqa: F401,F403
from mmpath.train.tasks.anomaly import _TileDataset  # noqa: F401
