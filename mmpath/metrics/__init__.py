"""Metrics: scores of arrays and tables (a leaf, like ``sc.metrics``).

Imports nothing above ``io`` (no torch, no ``tl``/``train``/``models``): training tasks, tools
and reports all score through here. One module per family:

* classification (``_slides``): :func:`slide_classification` (a slide table with truth and
  predictions) over :func:`classification_scores` (arrays): balanced accuracy, AUROC,
  confusion matrix; :func:`auroc_macro_ovr` (macro one-vs-rest AUROC that tolerates a fold
  without some class); :func:`regression_scores`;
* survival (``_survival``): :func:`concordance_index` (Harrell's C) and :func:`cox_ph_loss`
  (the numpy reference of the Cox partial likelihood the MIL survival head trains with);
* segmentation (``_segmentation``): :func:`dice_jaccard` tables of label masks,
  :func:`confusion_counts`, :func:`check_labels`;
* anomaly (``_anomaly``): :func:`anomaly_metrics` (AUROC, AUPRC), :func:`binary_labels`;
* expression (``_expression``): :func:`pearson_per_gene`, :func:`spearman_per_gene`,
  :func:`per_gene_scores` (HEST-Benchmark);
* retrieval (``_retrieval``): :func:`top_k_accuracy`, :func:`majority_vote_at_k` (mMV@k),
  :func:`recall_at_k`;
* folds (``_folds``): :func:`group_kfold` / :func:`cv_groups` / :func:`folds_from_groups`
  (tiles grouped by slide, spatial blocks as a fallback) and :func:`patient_kfold`; one
  splitter, seeded.

Example
-------
>>> m = mm.metrics.slide_classification(slides, label="subtype")
>>> m.balanced_accuracy, m.auroc
>>> mm.metrics.dice_jaccard(pred_masks, true_masks, 2).loc["mean", "dice"]
"""

from __future__ import annotations

from mmpath.metrics._anomaly import anomaly_metrics, binary_labels
from mmpath.metrics._expression import pearson_per_gene, per_gene_scores, spearman_per_gene
from mmpath.metrics._folds import CVGroups, cv_groups, folds_from_groups, group_kfold, patient_kfold
from mmpath.metrics._retrieval import majority_vote, majority_vote_at_k, recall_at_k, top_k_accuracy
from mmpath.metrics._segmentation import check_labels, confusion_counts, dice_jaccard
from mmpath.metrics._slides import (
    ClassificationScores,
    auroc_macro_ovr,
    classification_scores,
    regression_scores,
    slide_classification,
)
from mmpath.metrics._survival import concordance_index, cox_ph_loss

__all__ = [
    # classification
    "ClassificationScores",
    "auroc_macro_ovr",
    "classification_scores",
    "regression_scores",
    "slide_classification",
    # survival
    "concordance_index",
    "cox_ph_loss",
    # segmentation
    "dice_jaccard",
    "confusion_counts",
    "check_labels",
    # anomaly
    "anomaly_metrics",
    "binary_labels",
    # expression
    "pearson_per_gene",
    "spearman_per_gene",
    "per_gene_scores",
    # retrieval
    "top_k_accuracy",
    "majority_vote",
    "majority_vote_at_k",
    "recall_at_k",
    # folds
    "CVGroups",
    "cv_groups",
    "group_kfold",
    "folds_from_groups",
    "patient_kfold",
]
