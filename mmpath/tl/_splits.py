"""Moved: cross-validation folds live in :mod:`mmpath.metrics` (``mm.metrics.group_kfold``).

The old names still import from here, with a DeprecationWarning.
"""

from __future__ import annotations

from mmpath._moved import moved

__getattr__ = moved(
    __name__,
    {
        "CVGroups": "mmpath.metrics.CVGroups",
        "cv_groups": "mmpath.metrics.cv_groups",
        "group_kfold": "mmpath.metrics.group_kfold",
        "folds_from_groups": "mmpath.metrics.folds_from_groups",
        "_cv_groups": "mmpath.metrics._folds._cv_groups",
    },
)
