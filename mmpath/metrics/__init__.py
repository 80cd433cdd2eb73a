"""Metrics: scores of arrays and tables (a leaf, like ``sc.metrics``).

Imports nothing above ``io`` (no torch, no ``tl``/``train``/``models``): training tasks, tools
and reports all score through here.

* slide classification: :func:`slide_classification` (a slide table with truth and
  predictions) over :func:`classification_scores` (arrays): balanced accuracy, AUROC,
  confusion matrix;
* survival: :func:`concordance_index` (Harrell's C) and :func:`cox_ph_loss` (the numpy
  reference of the Cox partial likelihood the MIL survival head trains with);
* folds: :func:`patient_kfold`, k folds that never put one patient on both sides.

Example
-------
>>> m = mm.metrics.slide_classification(slides, label="subtype")
>>> m.balanced_accuracy, m.auroc
"""

from __future__ import annotations

from mmpath.metrics._folds import patient_kfold
from mmpath.metrics._slides import (
    ClassificationScores,
    classification_scores,
    regression_scores,
    slide_classification,
)
from mmpath.metrics._survival import concordance_index, cox_ph_loss

__all__ = [
    "ClassificationScores",
    "classification_scores",
    "regression_scores",
    "slide_classification",
    "concordance_index",
    "cox_ph_loss",
    "patient_kfold",
]
