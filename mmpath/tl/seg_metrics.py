"""Moved: segmentation and anomaly metrics live in :mod:`mmpath.metrics` (``mm.metrics``).

The old names still import from here, with a DeprecationWarning.
"""

from __future__ import annotations

from mmpath._moved import moved

__getattr__ = moved(
    __name__,
    {
        "dice_jaccard": "mmpath.metrics.dice_jaccard",
        "confusion_counts": "mmpath.metrics.confusion_counts",
        "check_labels": "mmpath.metrics.check_labels",
        "anomaly_metrics": "mmpath.metrics.anomaly_metrics",
        "binary_labels": "mmpath.metrics.binary_labels",
    },
)
